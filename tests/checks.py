"""Checks shared by several test files (imported as ``checks``: pytest puts ``tests/`` on the path)."""

import dataclasses
import importlib.util
import shlex
import signal
import sys
from pathlib import Path

import torch

from nestedmemory.models.modeling import cache_of
from nestedmemory.train import DataConfig, ModelConfig, SampleConfig, TrainConfig

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the folder goes on the path: its scripts import each other's helpers,
    e.g. ``memory_core``)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses with string annotations look their module up
    spec.loader.exec_module(module)
    return module


def assert_causal(layer, x, at):
    """Replacing the inputs from position ``at`` on leaves the outputs before ``at`` bit-identical and changes later
    ones."""
    y = x.clone()
    y[:, at:] = torch.randn_like(y[:, at:])
    a, b = layer(x)[0], layer(y)[0]
    assert torch.equal(a[:, :at], b[:, :at]) and not torch.allclose(a[:, at:], b[:, at:])


def decode(model, x, schedule):
    """Logits of ``x`` fed in pieces of ``schedule`` through the cache (which counts every token), and the final
    cache."""
    cache, logits, seen = None, [], 0
    for n in schedule:
        out = model(x[:, seen:seen + n], cache=cache, use_cache=True)
        cache, seen = cache_of(out), seen + n
        logits.append(out.logits)
        assert cache.seen_tokens == seen
    return torch.cat(logits, 1), cache


def tiny_run(out, **changes) -> TrainConfig:
    """A training run of a few seconds: the tiny default preset, 6 steps of 4 × 32 tokens, a checkpoint every 3."""
    config = TrainConfig(model=ModelConfig(size="tiny"), data=DataConfig(seq_len=32, val_tokens=512, shuffle_buffer=16),
                         sample=SampleConfig(max_new_tokens=4), out=out and str(out), max_steps=6, batch_size=4,
                         log_every=1, eval_every=0, save_every=3, keep_checkpoints=3, progress=False)
    return dataclasses.replace(config, **changes)


def mqar_accuracy_after_training(preset: str, steps: int = 400) -> float:
    """Query accuracy of a tiny ``preset`` trained ``steps`` AdamW steps (lr 1e-3, batch 64) on 4-pair MQAR
    (vocabulary 64, 64 tokens; a fresh batch per step), on 256 held-out examples."""
    from nestedmemory.models import from_preset
    from nestedmemory.tasks import mqar

    torch.manual_seed(0)
    model = from_preset(preset, vocab_size=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    task = dict(vocab_size=64, seq_len=64, num_kv_pairs=4)
    for step in range(steps):
        data = mqar.generate(64, seed=step, **task)
        loss = model(input_ids=torch.as_tensor(data["input_ids"]), labels=torch.as_tensor(data["labels"])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return mqar.evaluate(model, n=256, seed=10 ** 6, batch_size=128, **task)["accuracy"]


def frozen(gates: dict) -> dict:
    """``gates`` with zero lr, decay and momentum: a ``memorize`` call then reads its initial state without changing
    it (every retention but ``elastic``), the reference for ``memory.recall``."""
    return {name: torch.zeros_like(g) if name in ("lr", "decay", "momentum") else g for name, g in gates.items()}


def cross_variate_losses(backbone, steps: int = 30) -> list[float]:
    """Training losses of ``backbone`` (``[B, V, N, 8] → [B, V, N, 8]``, 3 variates) between a scalar embedding and
    read-out, learning variate 0 at t from variate 1 at t and variate 2 at t − 1 (across variates and time)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), backbone, torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    x = torch.randn(16, 3, 12, 1)
    target = x[:, 1] + torch.nn.functional.pad(x[:, 2, :-1], (0, 0, 1, 0))
    losses = []
    for _ in range(steps):
        loss = (model(x)[:, 0] - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def one_line_command_error(capsys, argv, command: str) -> str:
    """Run the command line ``argv``: exit status 2 and one line ``nestedmemory <command>: error: …`` on stderr, no
    traceback; returns that line."""
    from nestedmemory.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"nestedmemory {command}: error: "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err + captured.out, err
    return err


def ctrl_c_before_step(monkeypatch, trainer, step: int) -> None:
    """A real Ctrl-C (SIGINT) as ``trainer._train_step`` starts the step after ``step`` done ones (an epoch trainer's
    class: ``self.step`` counts the steps done): that step finishes, then the trainer saves and stops."""
    original = trainer._train_step

    def interrupted(self, batch):
        if self.step == step:
            signal.raise_signal(signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(trainer, "_train_step", interrupted)


def printed_resume_command(capsys) -> list[str]:
    """The arguments of the ``resume with: nestedmemory …`` line an interrupted run printed."""
    program, *argv = shlex.split(capsys.readouterr().out.split("resume with: ")[1].splitlines()[0])
    assert program == "nestedmemory"
    return argv
