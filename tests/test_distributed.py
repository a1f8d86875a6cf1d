"""``torchrun --nproc_per_node 2`` on the CPU (gloo): DDP and FSDP2 train the tiny preset with the losses of one
process on the same global batch."""

import os
import subprocess
import sys

import pytest

from nestedmemory.train import DataConfig, ModelConfig, SampleConfig, TrainConfig, metrics, train

STEPS, BATCH, SEQ, VAL = 4, 4, 32, 512
PRESET = "titans-lmm"  # FSDP2 does not shard CMS presets (hope) yet; the trainer says so
FLAGS = ["--max-steps", str(STEPS), "--model.preset", PRESET, "--model.size", "tiny", "--batch-size", str(BATCH), "--data.seq-len", str(SEQ),
         "--data.val-tokens", str(VAL), "--sample.max-new-tokens", "2", "--log-every", "1", "--eval-every", "0",
         "--save-every", "0", "--progress", "false"]


def records(run_dir) -> tuple[list[float], float]:
    found = metrics.read(run_dir / metrics.METRICS)
    return [r["loss"] for r in found if "loss" in r], found[-1]["val_loss"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    train(TrainConfig(model=ModelConfig(preset=PRESET, size="tiny"), data=DataConfig(seq_len=SEQ, val_tokens=VAL),
                      sample=SampleConfig(max_new_tokens=2), out=str(out), max_steps=STEPS, batch_size=BATCH,
                      log_every=1, eval_every=0, save_every=0, progress=False))
    return records(out)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(single, tmp_path, parallel):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "nestedmemory", "train",
               *FLAGS, "--parallel", parallel, "--out", str(out)]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses, val_loss = records(out)
    assert losses == pytest.approx(single[0], rel=1e-5) and val_loss == pytest.approx(single[1], rel=1e-5)
    assert (out / "checkpoint-000004" / "model.safetensors").is_file() and "ROMEO:" in result.stdout
