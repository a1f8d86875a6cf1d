"""Training: bit-for-bit resume (after Ctrl-C and from a periodic checkpoint), checks that refuse bad inputs before
anything is written, optimizers and schedule, the default configuration."""

import dataclasses

import checks
import hashlib
import signal

import pytest
import torch
from safetensors.torch import load_file

from nestedmemory.models import PRESETS, NestedMemoryForCausalLM
from nestedmemory.train import (
    DEFAULT_PRESET,
    DEFAULT_SIZE,
    CheckpointError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TNTConfig,
    TrainConfig,
    UserError,
    metrics,
    model_config,
    train,
)
from nestedmemory.layers import TNTMemory
from nestedmemory.train import checkpoint as checkpoints
from nestedmemory.train import inference
from nestedmemory.train.loop import Trainer
from nestedmemory.train.optim import build_optimizer, build_scheduler


tiny = checks.tiny_run


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics.read(run_dir / metrics.METRICS) if "loss" in r}


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at steps 3 and 6)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, train(tiny(out))


def test_run_folder_and_summary(reference):
    out, summary = reference
    assert not summary["interrupted"] and summary["step"] == 6
    assert [p.name for p in checkpoints.checkpoints(out)] == ["checkpoint-000003", "checkpoint-000006"]
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    assert metrics.read(out / metrics.METRICS)[-1]["val_loss"] == pytest.approx(summary["val_loss"])
    assert (out / "loss.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert (out / "sample.txt").read_text().startswith("ROMEO:")


def test_ctrl_c_then_resume_is_bit_for_bit(reference, tmp_path, monkeypatch):
    step = Trainer._train_step

    def interrupted_after_step_4(self, batch):
        result = step(self, batch)
        if self.step == 3:  # the 4th step has just run
            signal.raise_signal(signal.SIGINT)
        return result

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", interrupted_after_step_4)
        summary = train(tiny(out))
    assert summary["interrupted"] and summary["step"] == 4
    assert checkpoints.resolve(out).name == "checkpoint-000004"
    assert train(tiny(out, resume=str(out)))["val_loss"] == reference[1]["val_loss"]
    assert losses(out) == losses(reference[0])
    final = "checkpoint-000006/model.safetensors"
    for name, tensor in load_file(reference[0] / final).items():
        assert torch.equal(tensor, load_file(out / final)[name]), name


def test_branch_from_periodic_checkpoint(reference, tmp_path):
    out = tmp_path / "branch"
    train(tiny(out, resume=str(reference[0] / "checkpoint-000003")))
    assert losses(out) == losses(reference[0])


def test_resume_refuses_changed_config_and_older_checkpoint(reference):
    run = reference[0]
    before = digest(run)
    with pytest.raises(CheckpointError, match=r"incompatible config.*model.overrides.hidden_size"):
        train(tiny(run, resume=str(run), model=ModelConfig(size="tiny", overrides=dict(hidden_size=32))))
    with pytest.raises(CheckpointError, match="incompatible config.*optim.lr"):
        train(tiny(run, resume=str(run), optim=OptimConfig(lr=1e-2)))
    with pytest.raises(UserError, match="not the newest checkpoint"):
        train(tiny(None, resume=str(run / "checkpoint-000003")))
    with pytest.raises(UserError, match="already exists"):
        train(tiny(run))
    assert digest(run) == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_checkpoint_is_refused_and_kept(tmp_path, damage):
    run = tmp_path / "run"
    train(tiny(run, max_steps=2, save_every=0))
    weights = run / "checkpoint-000002" / ("trainer_state.pt" if damage == "garbage" else "model.safetensors")
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(b"not a checkpoint")
    else:
        weights.unlink()
    before = digest(run)
    with pytest.raises(CheckpointError, match="checkpoint-000002"):
        train(tiny(run, max_steps=4, resume=str(run)))
    assert digest(run) == before


def test_bad_inputs_raise_user_errors_before_writing(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        train(tiny(tmp_path / "a", model=ModelConfig(preset="nope")))
    with pytest.raises(UserError, match="data file not found"):
        train(tiny(tmp_path / "b", data=DataConfig(path=str(tmp_path / "missing.txt"))))
    with pytest.raises(UserError, match="checkpoint not found"):
        train(tiny(tmp_path / "c", resume=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="unknown size"):
        train(tiny(tmp_path / "d", model=ModelConfig(size="huge")))
    assert not any(tmp_path.iterdir())


def test_default_run_configuration():
    config = TrainConfig()
    assert (config.model.preset, config.model.size) == (DEFAULT_PRESET, DEFAULT_SIZE)
    assert DEFAULT_PRESET in PRESETS and config.data.path == "shakespeare" and config.data.tokenizer == "byte"
    small = model_config(config.model, vocab_size=256)
    assert (small.hidden_size, small.num_layers, small.vocab_size) == (128, 4, 256)
    assert model_config(ModelConfig(size="tiny", memory=dict(chunk_size=4)), 256).memory["chunk_size"] == 4
    assert model_config(ModelConfig("transformer++"), 256).memory is None  # sizes' memory settings skip it
    with pytest.raises(UserError, match="no memory rule"):
        model_config(ModelConfig("transformer++", memory=dict(chunk_size=4)), 256)


def test_tnt_stage2_changes_only_the_local_chunk_sizes(tmp_path):
    """TNT §3.3 as a training option: the last 2 of 5 steps run with local chunk 1 (tiny: 4). The steps before
    equal a one-stage run's; the parameters keep their names and shapes; the stage-2 checkpoint loads with the
    stage-2 chunks; resuming inside stage 2 gives the uninterrupted run's losses."""
    tnt = ModelConfig(preset="tnt", size="tiny")
    one = train(tiny(tmp_path / "one", model=tnt, max_steps=5, save_every=0))
    two_config = tiny(tmp_path / "two", model=tnt, max_steps=5, save_every=4, tnt=TNTConfig(2, [1]))
    two = train(two_config)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [a[s] for s in (1, 2, 3)] == [b[s] for s in (1, 2, 3)] and a[5] != b[5]
    assert [r for r in metrics.read(tmp_path / "two" / metrics.METRICS) if "stage" in r] == [
        dict(step=3, stage=2, local_chunk_sizes=[1])]
    first, second = (load_file(tmp_path / run / "checkpoint-000005" / "model.safetensors") for run in ("one", "two"))
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in second.items()}
    model, _, _ = inference.load(checkpoints.resolve(tmp_path / "two"), torch.device("cpu"))
    sizes = {m.local_chunk_sizes for m in model.modules() if isinstance(m, TNTMemory)}
    assert sizes == {(1,)} and one["val_loss"] != two["val_loss"]
    branch = tmp_path / "branch"
    train(dataclasses.replace(two_config, out=str(branch), resume=str(tmp_path / "two" / "checkpoint-000004")))
    assert losses(branch) == b
    with pytest.raises(UserError, match="needs a TNT model"):
        train(tiny(tmp_path / "bad", tnt=TNTConfig(2, [1])))
    with pytest.raises(UserError, match="local_chunk_sizes"):
        train(tiny(tmp_path / "bad", model=tnt, tnt=TNTConfig(2, [3])))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name", ["adamw", "muon", "m3"])
def test_optimizers_and_schedule(name):
    network = NestedMemoryForCausalLM(model_config(ModelConfig(size="tiny"), 256))
    optimizer = build_optimizer(network, OptimConfig(name=name, weight_decay=0.1, warmup_steps=2))
    kinds = {len(g["params"]): g["weight_decay"] for g in optimizer.param_groups}
    assert len(optimizer.param_groups) == 3 and 0.0 in kinds.values()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(network.parameters()))
    scheduler = build_scheduler(optimizer, OptimConfig(warmup_steps=2, min_lr_ratio=0.1), max_steps=10)
    rates = []
    for _ in range(10):
        x = torch.randint(0, 256, (2, 16))
        network(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        rates.append(scheduler.get_last_lr()[0])
    assert rates[0] == pytest.approx(optimizer.defaults["lr"]) and rates[-1] == pytest.approx(0.1 * 3e-3)
    assert all(torch.isfinite(p).all() for p in network.parameters())
