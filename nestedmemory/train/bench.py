"""``nestedmemory bench``: the scripts under ``benchmarks/`` of a source checkout, or a quick training-throughput
measure (forward + backward + optimizer step, tokens/s) of a model."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import NestedMemoryForCausalLM
from .config import AT_LEAST_ONE, Limit, ModelConfig, OptimConfig, check_device, model_config
from .errors import UserError
from .optim import build_optimizer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def scripts() -> list[str]:
    """The benchmark scripts of the source checkout (none when the package is installed from a wheel)."""
    return sorted(p.stem for p in BENCHMARKS.glob("*.py")) if BENCHMARKS.is_dir() else []


def run_script(name: str, arguments: list[str]) -> int:
    if name not in scripts():
        raise UserError(f"unknown benchmark {name!r}; the scripts under {BENCHMARKS} are {scripts()}")
    return subprocess.call([sys.executable, str(BENCHMARKS / f"{name}.py"), *arguments])


@dataclass
class BenchConfig(ModelConfig):
    """The model measured (its flags unprefixed: ``--preset``, ``--size``, ``--overrides``, ``--memory``) and how.

    Args:
        seq_len: tokens per sequence
        batch_size: sequences per step
        steps: steps timed, after one warm-up step
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``mps``
    """

    seq_len: int = 256
    batch_size: int = 16
    steps: int = 3
    device: str | None = None

    FLAGS = ""
    LIMITS = {"seq_len": Limit(2), "batch_size": AT_LEAST_ONE, "steps": AT_LEAST_ONE}

    def check(self) -> None:
        super().check()
        check_device("device", self.device)


def throughput(config: BenchConfig) -> float:
    """Training tokens/s of the model of ``config`` (random byte tokens, AdamW), timed over ``config.steps`` steps
    after one warm-up."""
    torch.set_flush_denormal(True)  # not runtime.configure_cpu: its mmap threshold costs +75% CPU time here
    torch.manual_seed(0)
    device, steps = config.device or "cpu", config.steps
    network = NestedMemoryForCausalLM(model_config(config, 256)).to(device)
    optimizer = build_optimizer(network, OptimConfig())
    batch = torch.randint(0, 256, (config.batch_size, config.seq_len), device=device)

    def step():
        network(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch.numel() / (time.perf_counter() - start)
