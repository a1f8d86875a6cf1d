"""Optimizer benchmark (issue 12): AdamW, Muon and M3 training a tiny language model on the embedded corpus.

Each run is ``nestedmemory train`` itself (:func:`nestedmemory.train.loop.train`): the embedded Shakespeare corpus
with the byte tokenizer, its first ``data.val_tokens`` tokens held out for validation, the CLI's optimizer
construction (:func:`nestedmemory.train.optim.build_optimizer`: Muon and M3 orthogonalise the matrices, the
embeddings, LM head and vectors take their built-in Adam path; weight decay on matrices and embeddings), its
schedule (linear warm-up, cosine decay) and gradient clipping, all at the CLI defaults; only the model, the
sequence length, the batch, the number of steps and the learning rate are set here.

The model is the ``transformer++`` preset at size ``tiny`` (2 layers, width 64, 140K parameters): the cheapest
preset (attention and a SwiGLU MLP, no test-time memory), whose 14 square and 3:1 projection matrices are
exactly what Muon and M3 treat differently from AdamW.

Per optimizer: the final validation loss at each learning rate of its sweep (:data:`LRS`, seed 0); the lr with
the lowest one; then seeds 1 and 2 at that lr (the seed sets the initialisation and the data order). A run that
reaches a NaN or infinite loss counts as diverged (``inf``). Writes ``docs/optimizers.md`` and
``docs/optimizers.json`` and prints the Markdown; ``--threads`` (default 1) sets torch's CPU threads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from nestedmemory.tasks.report import markdown_table, write_report
from nestedmemory.train.config import DataConfig, ModelConfig, OptimConfig, SampleConfig, TrainConfig
from nestedmemory.train.errors import NonFiniteError
from nestedmemory.train.loop import train
from nestedmemory.train.optim import OPTIMIZERS

PRESET, SIZE = "transformer++", "tiny"
STEPS, BATCH_SIZE, SEQ_LEN = 300, 16, 128
SEEDS = (0, 1, 2)
#: CLI name → (display name, learning rates swept): four half-decade steps around each optimizer's best lr.
LRS = {
    "adamw": ("AdamW", (1e-3, 3e-3, 1e-2, 3e-2)),
    "muon": ("Muon", (3e-3, 1e-2, 3e-2, 1e-1)),
    "m3": ("M3", (3e-3, 1e-2, 3e-2, 1e-1)),
}
OUT = Path(__file__).resolve().parents[1] / "docs" / "optimizers.md"


def config(name: str, lr: float, seed: int, out: str) -> TrainConfig:
    """The run: the CLI defaults but for the model, sequence length, batch, steps, lr and seed; validation at the
    end only, no checkpoint before it, a one-token sample."""
    return TrainConfig(model=ModelConfig(preset=PRESET, size=SIZE), data=DataConfig(seq_len=SEQ_LEN),
                       optim=OptimConfig(name=name, lr=lr), sample=SampleConfig(max_new_tokens=1), out=out,
                       max_steps=STEPS, batch_size=BATCH_SIZE, seed=seed, log_every=STEPS, eval_every=0,
                       save_every=0, progress=False, device="cpu")


def run(name: str, lr: float, seed: int) -> dict:
    """One training run in a temporary folder: its final validation loss (``inf`` if it diverged) and the
    unigram baseline."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        try:
            result = train(config(name, lr, seed, f"{tmp}/run"))
        except NonFiniteError:
            return dict(val_loss=math.inf, unigram_loss=None)
    return dict(val_loss=result["val_loss"], unigram_loss=result["unigram_loss"])


def benchmark(optimizer: str) -> dict:
    """The lr sweep at seed 0, then the other seeds at the best lr."""
    sweep = {lr: run(optimizer, lr, SEEDS[0]) for lr in LRS[optimizer][1]}
    best = min(sweep, key=lambda lr: sweep[lr]["val_loss"])
    seeds = [sweep[best]] + [run(optimizer, best, seed) for seed in SEEDS[1:]]
    losses = [r["val_loss"] for r in seeds]
    return dict(sweep={lr: r["val_loss"] for lr, r in sweep.items()}, best_lr=best, seed_losses=losses,
                mean=statistics.mean(losses), std=statistics.stdev(losses),
                unigram_loss=next((r["unigram_loss"] for r in seeds if r["unigram_loss"] is not None), None))


def loss_cell(loss: float) -> str:
    return f"{loss:.4f}" if math.isfinite(loss) else "diverged"


def json_safe(value):
    """``value`` with every non-finite float (a diverged run) replaced by ``None``, and float keys by strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def report(results: dict, timing: dict, threads: int, out: Path) -> str:
    """Write ``out`` (Markdown) and its ``.json``; return the Markdown. ``timing``: the run's ``wall`` and ``cpu``
    (process) minutes, and the machine's load average at its ``start`` and ``end`` (other processes slow it)."""
    rows = [[LRS[name][0], f"{r['best_lr']:g}", f"{r['mean']:.4f} ± {r['std']:.4f}",
             " / ".join(loss_cell(v) for v in r["seed_losses"])] for name, r in results.items()]
    lrs = sorted({lr for _, grid in LRS.values() for lr in grid})
    sweep = markdown_table(["lr"] + [display for display, _ in LRS.values()],
                           [[f"{lr:g}"] + [loss_cell(r["sweep"][lr]) if lr in r["sweep"] else ""
                                           for r in results.values()] for lr in lrs])
    unigram = next(r["unigram_loss"] for r in results.values() if r["unigram_loss"] is not None)
    settings = dict(preset=PRESET, size=SIZE, steps=STEPS, batch_size=BATCH_SIZE, seq_len=SEQ_LEN,
                    seeds=list(SEEDS), lrs={name: list(grid) for name, (_, grid) in LRS.items()}, threads=threads)
    notes = (
        f"Final validation loss (nats per byte) of `{PRESET}` (size `{SIZE}`) after {STEPS} steps of "
        f"{BATCH_SIZE} × {SEQ_LEN} bytes of the embedded Shakespeare corpus, each optimizer at the best lr of its "
        f"sweep (seed 0), mean ± sample std over seeds {', '.join(map(str, SEEDS))} (the seed sets initialisation "
        f"and data order). Unigram baseline: {unigram:.4f}. Everything else is `nestedmemory train`'s default: "
        f"validation on the first {DataConfig.val_tokens:,} tokens, weight decay {OptimConfig.weight_decay:g} on "
        f"matrices and embeddings, {OptimConfig.warmup_steps} warm-up steps, cosine decay to "
        f"{OptimConfig.min_lr_ratio:g} lr, gradient clipping at {OptimConfig.grad_clip:g}; AdamW betas "
        f"{OPTIMIZERS['adamw'][2]['betas']}; Muon and M3 at their defaults, orthogonalising the matrices only "
        "(embeddings, LM head and vectors take their Adam path).\n\n"
        f"Command: `python benchmarks/optimizers.py` ({threads} thread{'s' if threads > 1 else ''}, "
        f"{timing['wall']:.1f} minutes, {timing['cpu']:.1f} CPU minutes, load average {timing['start']:.1f} at the "
        f"start and {timing['end']:.1f} at the end); it writes this file and the JSON next to it.\n\n"
        "Learning-rate sweep (seed 0, final validation loss):\n\n" + sweep)
    write_report(out, title="Optimizers on a tiny language model: AdamW, Muon, M3",
                 header=["optimizer", "lr", "validation loss", "per seed"], rows=rows, notes=notes,
                 data=json_safe(dict(settings=settings, timing=timing, results=results)))
    return out.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file (the JSON goes next to it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()  # the sample's model loading
    wall, cpu, start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    results = {name: benchmark(name) for name in LRS}
    timing = dict(wall=(time.perf_counter() - wall) / 60, cpu=(time.process_time() - cpu) / 60, start=start,
                  end=os.getloadavg()[0])
    print(report(results, timing, args.threads, args.out))


if __name__ == "__main__":
    main()
