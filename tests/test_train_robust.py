"""Training that fails safely: a NaN or infinite loss, gradient, validation or weight stops the run (or is skipped,
on request) without reaching the weights or a checkpoint, and the run resumes; ``eval`` reports non-finite results
as errors; checkpoint rotation never deletes the checkpoint just written; a live run's folder is locked; every
preset builds only parameters it uses, so every preset resumes."""

import dataclasses
import json

import checks
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from nestedmemory.cli import main
from nestedmemory.data import load_tokenizer
from nestedmemory.layers import Attention
from nestedmemory.models import PRESETS, NestedMemoryForCausalLM, from_preset
from nestedmemory.train import (
    DataConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    UserError,
    metrics,
    model_config,
    train,
)
from nestedmemory.train import checkpoint as checkpoints
from nestedmemory.train.errors import NonFiniteError
from nestedmemory.train.evaluate import summary
from nestedmemory.train.lock import LOCK_FILE, RunLock


def tiny(out, **changes) -> TrainConfig:
    return checks.tiny_run(out, **{"save_every": 0, **changes})


def records(run_dir) -> list[dict]:
    return metrics.read(run_dir / metrics.METRICS)


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def finite_checkpoint(folder) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(folder / checkpoints.WEIGHTS).values())


@pytest.fixture
def poison(monkeypatch):
    """``poison(steps=…, evaluation=…)``: the model's loss becomes ``value`` (NaN) at the given training forward
    calls (1-based: training step n) and/or at every evaluation forward call."""

    def apply(steps=(), evaluation=False, value=math.nan):
        forward, calls = NestedMemoryForCausalLM.forward, [0]

        def poisoned(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if self.training:
                calls[0] += 1
            if out.loss is not None and ((self.training and calls[0] in steps) or (evaluation and not self.training)):
                out.loss = out.loss * value
            return out

        monkeypatch.setattr(NestedMemoryForCausalLM, "forward", poisoned)

    return apply


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """An uninterrupted 6-step run."""
    out = tmp_path_factory.mktemp("clean") / "run"
    return out, train(tiny(out))


# ------------------------------------------------------------------ non-finite steps
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_step_stops_unapplied_and_resumes(clean, poison, tmp_path, monkeypatch, value):
    """Step 5's loss is NaN / inf: the run stops at once, its update never reaches the weights (the state saved is
    step 4's, from which the resumed run reproduces the clean run exactly), no NaN is recorded, no sample drawn."""
    run = tmp_path / "run"
    poison(steps={5}, value=value)
    with pytest.raises(NonFiniteError, match=r"step 5: the loss is (nan|inf).*saved at step 4.*--optim.lr.*"
                                             r"--skip_nonfinite N") as error:
        train(tiny(run, save_every=3))
    monkeypatch.undo()
    assert "\n" not in str(error.value) and str(run) in str(error.value)
    assert [p.name for p in checkpoints.checkpoints(run)] == ["checkpoint-000003", "checkpoint-000004"]
    assert finite_checkpoint(run / "checkpoint-000004") and not (run / "sample.txt").exists()
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]
    assert not (run / LOCK_FILE).exists()
    summary_ = train(tiny(run, save_every=3, resume=str(run)))
    assert summary_["val_loss"] == clean[1]["val_loss"] and summary_["skipped"] == 0
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no duplicates
    assert losses(run) == losses(clean[0])


def test_skip_nonfinite_counts_skips_and_keeps_the_count_on_resume(poison, tmp_path, monkeypatch):
    """``skip_nonfinite=1``: step 2 is skipped (no loss recorded, ``skipped`` 1), step 3 — one too many — stops the
    run; resumed with the same limit, the saved count holds and the run finishes with 1 skip."""
    run = tmp_path / "run"
    poison(steps={2, 3})
    with pytest.raises(NonFiniteError, match=r"step 3: the loss is nan.*\(1 steps skipped already"):
        train(tiny(run, skip_nonfinite=1))
    monkeypatch.undo()
    assert [(r["step"], "loss" in r, r["skipped"]) for r in records(run)] == [(1, True, 0), (2, False, 1)]
    result = train(tiny(run, skip_nonfinite=1, resume=str(run)))
    assert result["skipped"] == 1 and math.isfinite(result["val_loss"])
    assert [(r["step"], r["skipped"]) for r in records(run) if "lr" in r][-1] == (6, 1)
    assert all(math.isfinite(v) for r in records(run) for v in r.values() if isinstance(v, float))


def test_nonfinite_validation_is_an_error_not_a_report(poison, tmp_path):
    run = tmp_path / "run"
    poison(evaluation=True)
    with pytest.raises(NonFiniteError, match=r"step 6: validation: the loss over \d+ tokens is nan"):
        train(tiny(run))
    assert finite_checkpoint(run / "checkpoint-000006") and not (run / "sample.txt").exists()
    assert not any("val_loss" in r for r in records(run))


def test_nonfinite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    """An update that makes a weight NaN (here forced after step 2) is caught when saving: no checkpoint of it, and
    rotation (keep 1) leaves the last finite one."""
    step = torch.optim.AdamW.step

    def corrupting(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        if self.state[self.param_groups[0]["params"][0]]["step"] == 2:
            self.param_groups[0]["params"][0].data.fill_(math.nan)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", corrupting)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="step 2: the weights are NaN or infinite, no checkpoint was written"):
        train(tiny(run, save_every=1, keep_checkpoints=1))
    assert [p.name for p in checkpoints.checkpoints(run)] == ["checkpoint-000001"]
    assert finite_checkpoint(run / "checkpoint-000001")


def test_cli_reports_a_nonfinite_step_in_one_line(poison, tmp_path, capsys):
    poison(steps={2})
    argv = ["train", "--model.size", "tiny", "--batch-size", "4", "--data.seq-len", "32", "--data.val-tokens", "512",
            "--progress", "false", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "step 2: the loss is nan" in err


# ------------------------------------------------------------------ eval
@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """A 2-step run whose saved weights were then overwritten with NaN."""
    run = tmp_path_factory.mktemp("broken") / "run"
    train(tiny(run, max_steps=2))
    weights = run / "checkpoint-000002" / checkpoints.WEIGHTS
    save_file({k: torch.full_like(t, math.nan) for k, t in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    return run


@pytest.mark.parametrize("what", ["perplexity", "suite"])
def test_eval_reports_nonfinite_results_as_errors(broken_run, tmp_path, capsys, what):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 4)
    argv = ["--data", str(text), "--seq-len", "32"] if what == "perplexity" else ["--suite", "mqar", "--n", "4"]
    assert main(["eval", str(broken_run), *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ("is nan (not finite)" in err or "NaN or infinite weights" in err), err
    assert not (tmp_path / "eval.json").exists()


def test_summary_refuses_nonfinite_sums():
    assert summary(torch.tensor([20.0, 10.0], dtype=torch.float64))["loss"] == 2.0
    for nats in (math.nan, math.inf):
        with pytest.raises(ValueError, match="not finite"):
            summary(torch.tensor([nats, 10.0], dtype=torch.float64))


# ------------------------------------------------------------------ checkpoints
def save_empty(run_dir, step, keep):
    return checkpoints.save(run_dir, step, model_config(ModelConfig(size="tiny"), 256), {}, load_tokenizer("byte"),
                            {}, keep)


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused_before_deleting(tmp_path, keep):
    save_empty(tmp_path, 1, keep=1)
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        save_empty(tmp_path, 2, keep=keep)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-000001"]


def test_rotation_deletes_only_older_checkpoints(tmp_path):
    for step in (3, 10):
        save_empty(tmp_path, step, keep=5)
    save_empty(tmp_path, 5, keep=1)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-000005", "checkpoint-000010"]
    save_empty(tmp_path, 11, keep=2)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["checkpoint-000010", "checkpoint-000011"]


def test_run_folder_links_its_newest_checkpoint(tmp_path):
    """``<run>/config.json`` etc. point at the newest checkpoint (a model folder for ``from_pretrained(<run>)`` and
    lm-eval); the trainer state is not linked, and a run folder still resolves to its newest checkpoint."""
    for step in (1, 2):
        save_empty(tmp_path, step, keep=1)
    links = sorted(p.name for p in tmp_path.iterdir() if p.is_symlink())
    assert "config.json" in links and "model.safetensors" in links and checkpoints.STATE not in links
    assert all((tmp_path / name).resolve().parent.name == "checkpoint-000002" for name in links)
    assert checkpoints.resolve(tmp_path) == tmp_path / "checkpoint-000002"
    assert checkpoints.resolve(tmp_path / "checkpoint-000002") == tmp_path / "checkpoint-000002"


# ------------------------------------------------------------------ run-folder lock
def test_run_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"{tmp_path} is in use by the training process PID {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path):
        pass


def test_live_run_folder_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    """A process holding the folder (another training run) makes a second ``train`` into it — the same ``--out``
    or an in-place ``--resume`` — fail at once naming the folder and its PID; once it is killed (``kill -9``: no
    clean-up), the folder is free again."""
    run = tmp_path / "run"
    train(tiny(run, max_steps=2))
    script = ("import sys, time\nfrom nestedmemory.train.lock import RunLock\nheld = RunLock(sys.argv[1])\n"
              "held.acquire()\nprint('locked', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for config in (tiny(run, max_steps=3, resume=str(run)), tiny(run, max_steps=3)):
            with pytest.raises(UserError, match=f"{run} is in use by the training process PID {holder.pid}"):
                train(config)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_FILE).exists()  # left behind by the killed holder: stale, not blocking
    assert train(tiny(run, max_steps=3, resume=str(run)))["step"] == 3
    assert not (run / LOCK_FILE).exists()


def test_stale_lock_file_alone_does_not_make_a_folder_taken(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("999999999\n")
    assert train(tiny(run, max_steps=1))["step"] == 1


# ------------------------------------------------------------------ every preset resumes
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_parameter_is_used(name):
    """No zero-size parameters, and one forward + backward gives every parameter a gradient (40 tokens: past
    TNT's tiny global chunk of 16, whose gates act only on later chunks, and past a tiny cached segment of 32, whose
    gates act only on later segments)."""
    torch.manual_seed(0)
    model = from_preset(name, "tiny")
    x = torch.randint(0, model.config.vocab_size, (2, 40))
    model(input_ids=x, labels=x).loss.backward()
    assert [n for n, p in model.named_parameters() if p.numel() == 0] == []
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_state_dicts_with_empty_persistent_tokens_still_load():
    """Checkpoints written while layers without persistent tokens held zero-size ``persistent_k/v`` load."""
    layer = Attention(16, 2)
    assert not any("persistent" in name for name, _ in layer.named_parameters())
    old = dict(layer.state_dict(), persistent_k=torch.empty(0, 2, 8), persistent_v=torch.empty(0, 2, 8))
    layer.load_state_dict(old)
    with_tokens = Attention(16, 2, persistent_tokens=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        with_tokens.load_state_dict(old)
    model = from_preset("transformer++", "tiny")
    state = model.state_dict()
    state.update({f"model.layers.{i}.mixers.0.{n}": torch.empty(0, 2, 16) for i in range(2) for n in
                  ("persistent_k", "persistent_v")})
    model.load_state_dict(state)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resumes(tmp_path, name):
    """2 steps, saved; resumed in place to step 3 (seq_len 16: TNT's global gates have had no gradient yet, so no
    optimizer state)."""
    run = tmp_path / "run"
    config = tiny(run, model=ModelConfig(name, "tiny"), data=DataConfig(seq_len=16, val_tokens=32, shuffle_buffer=4),
                  sample=SampleConfig(max_new_tokens=1), batch_size=2, max_steps=2)
    train(config)
    assert train(dataclasses.replace(config, max_steps=3, resume=str(run)))["step"] == 3
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3]


def test_a_run_of_the_earlier_titans_forms_resumes_as_trained(tmp_path, monkeypatch):
    """A MAC run saved before the paper's MAC became the default (its config.json has no ``mac_queries``) resumes
    with the learned-query form it was trained with."""
    from nestedmemory.models import presets

    run = tmp_path / "run"
    config = tiny(run, model=ModelConfig("titans-mac", "tiny"), data=DataConfig(seq_len=16, val_tokens=32,
                  shuffle_buffer=4), sample=SampleConfig(max_new_tokens=1), batch_size=2, max_steps=2)
    with monkeypatch.context() as patch:  # the earlier code: learned queries, no such config field
        patch.setitem(presets.SIZES, "tiny", dict(presets.SIZES["tiny"], mac_queries="learned"))
        train(config)
    saved = checkpoints.resolve(run) / "config.json"
    fields = json.loads(saved.read_text())
    del fields["mac_queries"], fields["memory_persistent"]
    saved.write_text(json.dumps(fields))
    assert train(dataclasses.replace(config, max_steps=3, resume=str(run)))["step"] == 3
