"""Multi-query associative recall across the model family (issue 12 item 5; SPEC §11.3): a Zoology-style MQAR
sweep (Arora et al. 2023) — query accuracy against model width and number of key-value pairs.

Protocol (Zoology's MQAR sweep, ``zoology/experiments/mqar_example_configs/original_mqar_configs.py``, scaled to a
CPU). One run = one preset × width × seed: a fresh ``from_preset(preset, size="tiny", hidden_size=width,
num_heads=4, vocab_size=V)`` (2 blocks, head dim width/4; the polynomial-feature presets keep their 8-dim memory
heads, ``memory_heads = width / 8``) is trained with ``train_on_task`` (AdamW, 10 % warm-up then cosine to 10 %,
gradient clip 1, no weight decay) on fresh batches of the in-repo Zoology generator (``nestedmemory.tasks.mqar``;
fillers are random tokens, Zoology's default). Like Zoology, training mixes cells: every step draws one
``(seq_len, kv_pairs)`` cell of ``TRAIN_MIX`` with its weight (Zoology: 100K examples of (64, 4), 20K of each
harder cell; the easy cell is what lets a model find the recall mechanism at all) and a batch of it. The model is
then scored on every ``TEST_CELLS`` cell, 512 held-out examples each (seed ``EVAL_SEED``: the same examples for
every model and training seed). Recorded per run: query accuracy per test cell, the mean training loss over the last
10 % of the steps, the first non-finite training loss (a diverged run), parameters, the recurrent state (floats
carried per sequence after the longest test length, summed over layers: every floating tensor of the decoding cache
but the short-convolution windows — memory weights and momenta, KV caches, CMS levels), and CPU / wall time.

Modes. ``--calibrate``: transformer++ alone, over ``CALIBRATION`` (learning rates × step budgets), to choose the
protocol (transformer++ must reach >= 95 % on the easiest test cells). ``--quick``: ``QUICK`` (< 15 min on one
thread). Default: the full sweep ``FULL``; ``--estimate`` prints its cost from the per-step CPU times in
``STEP_SECONDS`` and stops. ``--variants PRESET:key=value,...`` adds runs of a preset with memory rule / layer
options replaced (e.g. ``deltanet:lr_init=0.5,lr_max=1``; without ``--presets`` only the variants run);
``--section NAME`` stores the runs under another name; ``--workers N`` runs N processes of one thread each.

Output: ``--out`` (default ``docs/recall.md``) and its JSON twin (every section's command, settings and runs; a
command replaces the section it writes and keeps the others) and, for the sweep, a PNG. The Markdown is regenerated
from the JSON; everything after the line ``NOTES_MARK`` is hand-written analysis and is kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from nestedmemory.models import PRESETS, count_parameters, from_preset, preset_config
from nestedmemory.models.modeling import cache_of
from nestedmemory.tasks import mqar, train_on_task
from nestedmemory.tasks.common import rng_for

OUT = Path(__file__).resolve().parent.parent / "docs" / "recall.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/recall.py keeps everything after this line. -->"
EVAL_SEED = 1_000_003
#: the presets of the papers' comparison, in the order of the claim; names missing from ``PRESETS`` are skipped
#: (``atlas`` / ``atlas-mag``: either naming of the Atlas presets).
PAPER_PRESETS = ("transformer++", "titans-lmm", "titans-mac", "atlas", "atlas-mag", "omeganet", "moneta", "yaad",
                 "memora", "dla", "deeptransformer", "ttt-mlp", "tnt", "hope", "gated-deltanet", "deltanet",
                 "mamba2", "linear-attention")
#: the papers' ordering at equal state size (Atlas Fig. 7, Miras, Titans): each group above the next.
CLAIM = (("transformer++",), ("titans-lmm", "titans-mac", "atlas", "atlas-mag", "omeganet", "moneta", "yaad",
                              "memora"), ("gated-deltanet",), ("deltanet",), ("mamba2", "linear-attention"))
POLY_HEAD_DIM = 8  # the tiny size's memory head width of the polynomial-feature presets (``SIZES["tiny"]``)

#: the calibrated protocol (see the Markdown's calibration section).
PROTOCOL = dict(vocab_size=128, batch_size=64, lr=1e-3, steps=600, eval_examples=512)
#: training cells ``(seq_len, kv_pairs, weight)`` and test cells ``(seq_len, kv_pairs)``.
TRAIN_MIX = [(64, 4, 5), (128, 8, 1), (256, 16, 1)]
TEST_CELLS = [(64, 4), (128, 8), (256, 16), (256, 24), (256, 32), (512, 24)]
#: the easiest test cells, on which the calibration asks transformer++ for >= 95 %.
EASY_CELLS = [(64, 4), (128, 8)]
#: the full sweep: every preset at width 64, the cheapest also at 128 (``only``: the presets run at a width);
#: ``EXPENSIVE`` presets run only when named (their cost, in ``STEP_SECONDS``, would not fit 3 hours on 2 cores).
FULL = dict(widths=[64, 128], seeds=[0, 1], only={128: ["transformer++", "deeptransformer", "gated-deltanet",
                                                        "deltanet", "mamba2", "linear-attention"]})
EXPENSIVE = ("atlas", "atlas-mag", "hope")
QUICK = dict(widths=[64], seeds=[0, 1], presets=["transformer++", "deltanet"],
             variants=["deltanet:lr_init=0.5,lr_max=1.0"])  # DeltaNet with its step allowed up to 1 (β ∈ (0, 1))
CALIBRATION = dict(widths=[64], seeds=[0, 1], vocab_sizes=[64, 128], lrs=[1e-3, 3e-3], step_budgets=[300, 600])
#: measured CPU seconds per training step at width 64, batch 64, one thread, averaged over ``TRAIN_MIX`` (steps
#: at T = 64, 128, 256 weighted 5:1:1; atlas-mag: 11.8 s at T = 128, batch 32, wall clock, and out of memory
#: (> 14 GB) at T = 256, batch 64; hope: 4.2 / 13.5 / 66 s at T = 64 / 128 / 256); ``estimate_seconds`` scales
#: them with batch, width and the mixture's mean length.
STEP_SECONDS = {"transformer++": 0.17, "linear-attention": 0.24, "mamba2": 0.24, "deltanet": 0.25,
                "gated-deltanet": 0.26, "titans-lmm": 0.74, "titans-mac": 0.70, "moneta": 1.2, "yaad": 0.66,
                "memora": 0.97, "omeganet": 1.24, "atlas": 60.0, "atlas-mag": 30.0, "dla": 0.47,
                "deeptransformer": 0.28, "ttt-mlp": 0.55, "ttt-linear": 0.25, "tnt": 1.14, "hope": 14.4}
#: CPU time per step relative to width 64 (measured at 128: 2.2x transformer++, 2.4x deltanet, 2.8x titans-lmm,
#: 3.6x moneta).
WIDTH_FACTOR = {64: 1.0, 128: 2.5, 256: 10.0}


# ---------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------

def code_version() -> str:
    """The commit of the working tree and the library files changed since (the tree is shared while others
    edit it)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=OUT.parent.parent, capture_output=True, text=True,
                                  timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "nestedmemory").splitlines()]
    commit = git("rev-parse", "--short", "HEAD").strip()
    return commit + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def paper_presets() -> list[str]:
    """The presets of the papers' comparison that exist in this version of ``PRESETS``."""
    return [name for name in PAPER_PRESETS if name in PRESETS]


def model_config(preset: str, width: int, vocab_size: int, memory: dict | None = None) -> dict:
    """``from_preset`` overrides of a run: width, 4 heads, vocabulary; the polynomial-feature presets get
    ``width / 8`` memory heads (``preset_config`` derives them from the size's width, before the overrides);
    ``memory``: rule or layer options replacing the preset's (e.g. ``lr_init``)."""
    overrides = dict(hidden_size=width, num_heads=4, vocab_size=vocab_size)
    rule = PRESETS[preset][1]
    if rule is not None and rule.get("feature_map") == "poly":
        overrides["memory_heads"] = width // POLY_HEAD_DIM
    if memory:
        overrides["memory"] = dict(preset_config(preset).memory or {}, **memory)
    return overrides


class Mixture:
    """A task suite for ``train_on_task``: each batch is one cell of ``cells`` (``(seq_len, kv_pairs, weight)``),
    drawn with its weight from the batch's own seed. ``before_step(i)``, if given, is called before training step
    ``i`` draws its batch (after ``i`` updates): the learning curve's hook."""

    def __init__(self, cells, before_step=None):
        self.cells = [(t, kv) for t, kv, _ in cells]
        weights = np.array([w for _, _, w in cells], dtype=np.float64)
        self.p = weights / weights.sum()
        self.before_step, self.steps = before_step, 0

    def generate(self, n: int, *, seed: int, **options) -> dict:
        if self.before_step is not None:
            self.before_step(self.steps)
        self.steps += 1
        seq_len, kv_pairs = self.cells[rng_for(seed).choice(len(self.cells), p=self.p)]
        return mqar.generate(n, seed=seed, seq_len=seq_len, num_kv_pairs=kv_pairs, **options)

    def mean_length(self) -> float:
        return float(sum(p * t for p, (t, _) in zip(self.p, self.cells)))


def state_floats(model, seq_len: int) -> tuple[int, list[int]]:
    """Floats a model carries per sequence after ``seq_len`` tokens: every floating tensor of its decoding cache
    but the short-convolution windows; total and per cache entry (the continuum memory last)."""
    def count(value):
        if isinstance(value, torch.Tensor):
            return value[0].numel() if value.is_floating_point() else 0
        if isinstance(value, dict):
            return sum(count(v) for k, v in value.items() if k != "conv")
        if isinstance(value, (list, tuple)):
            return sum(count(v) for v in value)
        if hasattr(value, "states") and hasattr(value, "continuum"):  # a nested LayerStates (MAC, Hope)
            return count(value.states) + count(value.continuum)
        if hasattr(value, "__dataclass_fields__"):  # MemoryState
            return sum(count(getattr(value, f)) for f in value.__dataclass_fields__)
        return 0

    with torch.no_grad():
        cache = cache_of(model(input_ids=torch.zeros(1, seq_len, dtype=torch.long), use_cache=True))
    per_entry = [count(entry) for _, entry in sorted(cache.states.items())]
    continuum = count(cache.continuum)
    per_entry += [continuum] if continuum else []
    return sum(per_entry), per_entry


def cell_key(seq_len: int, kv_pairs: int) -> str:
    return f"{seq_len}:{kv_pairs}"


def test_accuracy(model, job: dict, examples: int) -> dict:
    """Query accuracy on ``examples`` held-out examples of every test cell of ``job``."""
    return {cell_key(t, kv): mqar.evaluate(model, n=examples, seed=EVAL_SEED, batch_size=64,
                                           vocab_size=job["vocab_size"], seq_len=t, num_kv_pairs=kv)["accuracy"]
            for t, kv in job["test_cells"]}


def run_one(job: dict) -> dict:
    """Train and score one run (``job``: preset, width, seed, the protocol, train_mix, test_cells, memory options,
    ``curve_every``: every that many steps, the accuracy on a quarter of the held-out examples)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    config = model_config(job["preset"], job["width"], job["vocab_size"], job.get("memory"))
    torch.manual_seed(job["seed"])
    model = from_preset(job["preset"], size="tiny", **config)
    curve, every, curve_cpu = [], job.get("curve_every"), [0.0]

    def before_step(step):  # evaluation draws no random numbers: the run is the same with or without a curve
        if every and step and step % every == 0:
            start = time.process_time()
            curve.append({"step": step, "accuracy": test_accuracy(model, job, job["eval_examples"] // 4)})
            curve_cpu[0] += time.process_time() - start

    start, cpu = time.perf_counter(), time.process_time()
    losses = train_on_task(model, Mixture(job["train_mix"], before_step), steps=job["steps"],
                           batch_size=job["batch_size"], lr=job["lr"], seed=job["seed"], vocab_size=job["vocab_size"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu - curve_cpu[0]
    diverged = next((step for step, loss in enumerate(losses) if not math.isfinite(loss)), None)
    tail = losses[-max(1, len(losses) // 10):]
    total, per_entry = state_floats(model, max(t for t, _ in job["test_cells"]))
    return dict(job, accuracy=test_accuracy(model, job, job["eval_examples"]), final_loss=sum(tail) / len(tail),
                diverged_at=diverged, parameters=count_parameters(model.config), state=total,
                state_per_layer=per_entry, train_seconds=round(seconds, 1),
                cpu_seconds_per_step=round(cpu / job["steps"], 4), **({"curve": curve} if every else {}))


# ---------------------------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------------------------

def jobs_of(runs: list[tuple[str, dict]], widths, seeds, protocol: dict, train_mix, test_cells) -> list[dict]:
    """One job per (preset, memory options) of ``runs``, width and seed."""
    return [dict(preset=p, width=w, seed=s, **protocol, train_mix=[list(c) for c in train_mix],
                 test_cells=[list(c) for c in test_cells], **({"memory": memory} if memory else {}))
            for p, memory in runs for w in widths for s in seeds]


def estimate_seconds(job: dict) -> float:
    """The expected CPU time of ``job`` from :data:`STEP_SECONDS` (linear in batch and length): its training
    steps, and its evaluation counted as forward passes at a third of a training step's cost."""
    mean_length = Mixture(TRAIN_MIX).mean_length()
    per_step = STEP_SECONDS.get(job["preset"], 1.0) * WIDTH_FACTOR.get(job["width"], (job["width"] / 64) ** 2)
    training = per_step * job["batch_size"] / 64 * Mixture(job["train_mix"]).mean_length() / mean_length
    evaluation = per_step * job["eval_examples"] / 64 * sum(t for t, _ in job["test_cells"]) / mean_length / 3
    curve = job["steps"] // job["curve_every"] / 4 if job.get("curve_every") else 0
    return training * job["steps"] + evaluation * (1 + curve)


def run_jobs(jobs: list[dict], workers: int, done=lambda record: None) -> list[dict]:
    """Every job, the most expensive first, in ``workers`` processes of one thread (in this process for 1);
    ``done`` gets each record as it arrives."""
    order = sorted(jobs, key=estimate_seconds, reverse=True)
    records = []

    def finish(record):
        records.append(record)
        accuracy = " ".join(f"{k} {100 * v:5.1f}" for k, v in record["accuracy"].items())
        print(f"{label(record):>24s} w{record['width']:<4d} seed {record['seed']} steps {record['steps']} "
              f"lr {record['lr']:g} V {record['vocab_size']}: {accuracy}  loss {record['final_loss']:.3f}"
              + (f"  DIVERGED at {record['diverged_at']}" if record["diverged_at"] is not None else "")
              + f"  {record['cpu_seconds_per_step']:.2f} CPU s/step", flush=True)
        done(record)

    if workers <= 1:
        for job in order:
            finish(run_one(job))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run_one, job) for job in order]):
                finish(future.result())
    return records


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"deltanet:lr_init=0.5,lr_max=1"`` → ``("deltanet", {"lr_init": 0.5, "lr_max": 1})`` (values parsed as
    JSON, else kept as strings)."""
    preset, _, options = spec.partition(":")
    if preset not in PRESETS or "=" not in options:
        raise SystemExit(f"a variant is PRESET:key=value[,key=value] with a known preset, got {spec!r}")
    memory = {}
    for item in options.split(","):
        key, _, value = item.partition("=")
        try:
            memory[key] = json.loads(value)
        except json.JSONDecodeError:
            memory[key] = value
    return preset, memory


def parse_cells(specs: list[str], size: int) -> list[tuple]:
    cells = [tuple(int(x) for x in spec.split(":")) for spec in specs]
    if any(len(c) != size for c in cells):
        raise SystemExit(f"cells are {':'.join(['N'] * size)}, got {specs}")
    return cells


# ---------------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------------

def label(record: dict) -> str:
    memory = record.get("memory")
    return record["preset"] + (" (" + ", ".join(f"{k}={v}" for k, v in memory.items()) + ")" if memory else "")


def row_key(record: dict) -> tuple:
    """Runs that differ only in their seed share a row."""
    return label(record), record["width"], record["steps"], record["lr"], record["batch_size"], record["vocab_size"]


def grouped(runs: list[dict]) -> dict:
    """``{row_key: [records over seeds]}``, models in the order of :data:`PAPER_PRESETS`."""
    rank = {name: i for i, name in enumerate(PAPER_PRESETS)}
    table = {}
    for r in sorted(runs, key=lambda r: (rank.get(r["preset"], len(rank)), row_key(r), r["seed"])):
        table.setdefault(row_key(r), []).append(r)
    return table


def cell_text(records: list[dict], cell: str) -> str:
    """Mean accuracy over seeds (%) with each seed's value; † marks a diverged run."""
    values = [f"{100 * r['accuracy'][cell]:.0f}" + ("†" if r["diverged_at"] is not None else "") for r in records]
    average = statistics.mean(100 * r["accuracy"][cell] for r in records)
    if len(records) == 1:
        return f"{average:.1f}" + ("†" if records[0]["diverged_at"] is not None else "")
    return f"**{average:.1f}** ({'/'.join(values)})"


def section_table(runs: list[dict]) -> str:
    table = grouped(runs)
    cells = list(dict.fromkeys(c for r in runs for c in r["accuracy"]))
    keys = list(table)
    names = ["steps", "lr", "batch", "vocabulary"]
    varying = [name for i, name in enumerate(names, 2) if len({k[i] for k in keys}) > 1]
    header = ["model", "width"] + varying + ["parameters", "state (floats)"] + \
        [f"T={c.split(':')[0]} kv={c.split(':')[1]}" for c in cells] + ["CPU s / step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, records in table.items():
        extra = [key[2 + names.index(name)] for name in varying]
        row = [key[0], key[1]] + extra + [f"{records[0]['parameters']:,}", f"{records[0]['state']:,}"] + \
            [cell_text(records, c) if c in records[0]["accuracy"] else "" for c in cells] + \
            [f"{statistics.mean(r['cpu_seconds_per_step'] for r in records):.2f}"]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def curve_table(runs: list[dict]) -> str:
    """The learning curves: per run, the accuracy (%) on the first three test cells after each recorded step (a
    quarter of the held-out examples; the last column is the final score)."""
    steps = sorted({point["step"] for r in runs for point in r.get("curve", [])} | {r["steps"] for r in runs})
    cells = list(runs[0]["accuracy"])[:3]
    lines = ["Learning curves: accuracy (%) on " + " / ".join(f"T={c.split(':')[0]} kv={c.split(':')[1]}"
                                                           for c in cells) + " after each number of steps.\n",
             "| model | width | seed | " + " | ".join(map(str, steps)) + " |", "|" + "---|" * (len(steps) + 3)]
    for records in grouped(runs).values():
        for r in records:
            points = {p["step"]: p["accuracy"] for p in r.get("curve", [])} | {r["steps"]: r["accuracy"]}
            lines.append(f"| {label(r)} | {r['width']} | {r['seed']} | " + " | ".join(
                "/".join(f"{100 * points[s][c]:.0f}" for c in cells) if s in points else "" for s in steps) + " |")
    return "\n".join(lines) + "\n"


def ordering(runs: list[dict], cells: list[str]) -> str:
    """The papers' claim on the sweep, per width: each group's mean accuracy over ``cells`` and seeds; a group
    is above the next when its lowest member beats the next group's highest."""
    lines = []
    for width in sorted({r["width"] for r in runs}):
        score = {}
        for r in runs:
            if r["width"] == width and not r.get("memory"):
                score.setdefault(r["preset"], []).extend(100 * r["accuracy"][c] for c in cells)
        score = {p: statistics.mean(v) for p, v in score.items()}
        groups = [[p for p in group if p in score] for group in CLAIM]
        groups = [g for g in groups if g]
        for upper, lower in itertools.pairwise(groups):
            low, high = min(upper, key=score.get), max(lower, key=score.get)
            lines.append(f"| {width} | {' / '.join(upper)} > {' / '.join(lower)} | {low} {score[low]:.1f} | "
                         f"{high} {score[high]:.1f} | {'yes' if score[low] > score[high] else '**no**'} |")
    if not lines:
        return ""
    return ("| width | claim | lowest of the upper group | highest of the lower group | holds |\n"
            "|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Left: mean accuracy per model (rows) and width × test cell (columns); right: mean accuracy over the test
    cells against the recurrent state (log scale), one point per model and width."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = grouped(runs)
    cells = list(dict.fromkeys(c for r in runs for c in r["accuracy"]))
    widths = sorted({r["width"] for r in runs})
    rows = list(dict.fromkeys(key[0] for key in table))
    columns = [(w, c) for w in widths for c in cells]
    values = np.full((len(rows), len(columns)), np.nan)
    for key, records in table.items():
        for j, (w, c) in enumerate(columns):
            if key[1] == w and c in records[0]["accuracy"]:
                values[rows.index(key[0]), j] = statistics.mean(100 * r["accuracy"][c] for r in records)
    figure, (left, right) = plt.subplots(1, 2, figsize=(7 + 0.55 * len(columns), 1.5 + 0.32 * len(rows)),
                                         gridspec_kw=dict(width_ratios=[0.55 * len(columns) + 2.5, 4.5]))
    image = left.imshow(values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    left.set_xticks(range(len(columns)), [f"w{w}\nT{c.split(':')[0]}\nkv{c.split(':')[1]}" for w, c in columns],
                    fontsize=7)
    left.set_yticks(range(len(rows)), rows, fontsize=7)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not np.isnan(values[i, j]):
                left.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=6)
    figure.colorbar(image, ax=left, label="query accuracy (%)", fraction=0.04)
    colours = plt.get_cmap("tab20")
    for i, name in enumerate(rows):
        points = sorted((records[0]["state"],
                         statistics.mean(100 * statistics.mean(r["accuracy"].values()) for r in records))
                        for key, records in table.items() if key[0] == name)
        right.plot(*zip(*points), "o-", color=colours(i % 20), label=name, markersize=4, linewidth=1)
    right.set_xscale("log")
    right.set_xlabel("recurrent state (floats per sequence)")
    right.set_ylabel("mean accuracy over the test cells (%)")
    right.set_ylim(0, 100)
    right.legend(fontsize=6, loc="best")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


SECTION_TITLES = {"sweep": "Sweep", "calibration": "Calibration: transformer++"}


def write_markdown(path: Path, data: dict) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    notes = old.split(NOTES_MARK, 1)[1] if NOTES_MARK in old else "\n"
    parts = ["# Multi-query associative recall (MQAR): accuracy against width and key-value pairs\n",
             f"Generated by `benchmarks/recall.py` from `{path.with_suffix('.json').name}` (the script's docstring "
             "gives the protocol). Each accuracy cell: query accuracy (%) on the held-out examples of that test cell "
             "(T tokens, kv key-value pairs), **mean over seeds** with each seed's value in brackets (†: the "
             "training loss went non-finite). State: floats carried per sequence after the longest test length "
             "(decoding cache without the conv windows), summed over layers.\n"]
    order = sorted(data["sections"], key=lambda name: (name != "sweep", name != "calibration", name))
    for name in order:
        section = data["sections"][name]
        settings = ", ".join(f"{k}={v}" for k, v in section["settings"].items())
        wall = f", {section['wall_seconds'] / 60:.1f} min wall" if "wall_seconds" in section else ""
        parts.append(f"## {SECTION_TITLES.get(name, name)}\n\nCommand: `{section['command']}` ({section['date']}, "
                     f"{section['machine']}{wall}; code {section.get('code', '?')}). Settings (a column of the table "
                     f"overrides them): {settings}.\n\n" + section_table(section["runs"]))
        if any(r.get("curve") for r in section["runs"]):
            parts.append(curve_table(section["runs"]))
        if name == "sweep":
            easy = [cell_key(*c) for c in EASY_CELLS]
            cells = [c for c in dict.fromkeys(c for r in section["runs"] for c in r["accuracy"]) if c not in easy]
            check = ordering(section["runs"], cells)
            if check:
                parts.append("The papers' ordering (Transformer++ > Titans / Atlas / OmegaNet / Miras > Gated "
                             "DeltaNet > DeltaNet > Mamba2 / linear attention) at equal width, on the mean "
                             f"accuracy over the harder test cells ({', '.join(cells)}) and seeds:\n\n" + check)
            parts.append("![MQAR accuracy](recall.png)\n")
    path.write_text("\n".join(parts) + "\n" + NOTES_MARK + notes, encoding="utf-8")


def save(path: Path, name: str, section: dict) -> None:
    """Write ``section`` under ``name`` into the JSON at ``path`` (re-read first, so commands writing other
    sections at the same time keep theirs), then regenerate the Markdown and, for the sweep, the plot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path = path.with_suffix(".json")
    data = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {"sections": {}}
    data["sections"][name] = section
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    write_markdown(path, data)
    if name == "sweep" and section["runs"]:
        plot(section["runs"], path.with_suffix(".png"),
             f"MQAR query accuracy, mean over seeds ({json_path.name}, section sweep)")


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"the quick sweep: {QUICK}")
    mode.add_argument("--calibrate", action="store_true", help=f"transformer++ over {CALIBRATION}")
    parser.add_argument("--presets", nargs="+", help="default: every preset of the papers' comparison")
    parser.add_argument("--widths", type=int, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--train-mix", nargs="+", metavar="T:KV:WEIGHT", help=f"default {TRAIN_MIX}")
    parser.add_argument("--test-cells", nargs="+", metavar="T:KV", help=f"default {TEST_CELLS}")
    for key, value in PROTOCOL.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--variants", nargs="+", default=[], metavar="PRESET:KEY=VALUE,...",
                        help="extra runs of a preset with memory rule / layer options replaced, e.g. "
                             "deltanet:lr_init=0.5,lr_max=1 (without --presets: only these)")
    parser.add_argument("--curve-every", type=int, help="also record the accuracy every N steps (a learning curve)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    parser.add_argument("--section", help="store the runs under this name (default: sweep / calibration)")
    parser.add_argument("--estimate", action="store_true", help="print the runs' estimated CPU time and stop")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    grid = CALIBRATION if args.calibrate else QUICK if args.quick else FULL
    variants = [parse_variant(spec) for spec in args.variants or grid.get("variants", [])]
    presets = args.presets or ([] if args.variants else grid.get("presets") or (
        ["transformer++"] if args.calibrate else [p for p in paper_presets() if p not in EXPENSIVE]))
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown presets {unknown}; choose from {sorted(PRESETS)}")
    widths, seeds = args.widths or grid["widths"], args.seeds or grid["seeds"]
    train_mix = parse_cells(args.train_mix, 3) if args.train_mix else TRAIN_MIX
    test_cells = parse_cells(args.test_cells, 2) if args.test_cells else TEST_CELLS
    protocol = {key: getattr(args, key) for key in PROTOCOL}
    protocol.update({"curve_every": args.curve_every} if args.curve_every else {})
    runs = [(p, {}) for p in presets] + variants
    protocols = [dict(protocol, vocab_size=v, lr=lr, steps=n) for v in CALIBRATION["vocab_sizes"]
                 for lr in CALIBRATION["lrs"] for n in CALIBRATION["step_budgets"]] if args.calibrate else [protocol]
    only = {} if args.widths or args.presets else grid.get("only", {})
    jobs = [job for p in protocols for job in jobs_of(runs, widths, seeds, p, train_mix, test_cells)
            if job["preset"] in only.get(job["width"], [job["preset"]])]
    total = sum(map(estimate_seconds, jobs))
    print(f"{len(jobs)} runs, estimated {total / 3600:.2f} h of CPU time: {total / 3600 / max(1, args.workers):.2f} "
          f"h on {args.workers} worker(s)", flush=True)
    if args.estimate:
        for preset in dict.fromkeys(p for p, _ in runs):
            own = sum(estimate_seconds(j) for j in jobs if j["preset"] == preset)
            print(f"  {preset:>18s}  {own / 60:7.1f} min")
        return

    name = args.section or ("calibration" if args.calibrate else "sweep")
    section = dict(
        command="python benchmarks/recall.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.workers} "
                f"worker(s) x 1 thread", code=code_version(),
        settings=dict(protocol, train_mix=[list(c) for c in train_mix], eval_seed=EVAL_SEED, widths=widths,
                      seeds=seeds),
        runs=[])
    start = time.time()
    run_jobs(jobs, args.workers, done=lambda record: (section["runs"].append(record), save(args.out, name, section)))
    section["wall_seconds"] = round(time.time() - start)
    save(args.out, name, section)
    print(f"done in {(time.time() - start) / 60:.1f} min: {args.out}", flush=True)

if __name__ == "__main__":
    main()
