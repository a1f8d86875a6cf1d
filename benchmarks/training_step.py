"""The LM training step (issue 13, target 7): ``titans-mac``, ``titans-mag``, ``hope`` and ``tnt`` against
titans-pytorch's ``MemoryAsContextTransformer`` at a matched parameter count.

titans-pytorch at its README configuration with the depth the issue names (``num_tokens=256, dim=256, depth=4,
segment_len=128, num_persist_mem_tokens=4, num_longterm_mem_tokens=16``); ours: 4 layers, width 256, 4 heads of 64,
the tiny preset's other settings with the same attention sizes (segments / windows of 128, 4 persistent tokens), and
the SwiGLU width solved per model so that its parameter count matches titans-pytorch's (as the presets match the
papers' sizes). A step is the causal-LM loss on ``B × T`` byte tokens, its backward and an AdamW update; tokens/s
is ``B·T`` over the median step time (rounds alternate between the models, the first step of each is a checked
warm-up: finite loss and gradients), on the machine's physical cores. Peak memory: a fresh subprocess per model,
the extra resident bytes of one step after a warm-up (VmHWM after minus VmRSS before, as the other benchmarks).

Writes ``docs/training_step.md`` and its JSON twin (``--out``); hand-written notes below ``NOTES_MARK`` are kept.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc  # noqa: E402

from nestedmemory.models import from_preset, preset_config  # noqa: E402
from nestedmemory.models.presets import matched_intermediate  # noqa: E402
from nestedmemory.tasks.report import markdown_table, models_benchmark_main  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "training_step.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/training_step.py keeps everything after this line. -->"
THEIRS = "titans-pytorch MAC"
TITANS_PYTORCH = dict(num_tokens=256, dim=256, depth=4, segment_len=128, num_persist_mem_tokens=4,
                      num_longterm_mem_tokens=16)
SIZE = dict(hidden_size=256, num_hidden_layers=4, num_heads=4)
ATTENTION = dict(segment_size=128, window=128, persistent_tokens=4)
PRESETS = {"titans-mac": ATTENTION, "titans-mag": ATTENTION, "hope": {}, "tnt": {}}
FULL = dict(batch=2, length=1024, repeats=3)
QUICK = dict(batch=1, length=256, repeats=1)


def titans_pytorch_mac():
    """titans-pytorch's MAC, or ``None`` where the optional package is not installed."""
    try:
        from titans_pytorch import MemoryAsContextTransformer
    except ImportError:
        return None
    torch.manual_seed(0)
    return MemoryAsContextTransformer(**TITANS_PYTORCH)


def ours(preset: str, parameters: int | None):
    """Our ``preset`` at the benchmark's size, its SwiGLU width matched to ``parameters`` (when given)."""
    overrides = dict(SIZE, **PRESETS[preset])
    if parameters is not None:
        overrides["intermediate_size"] = matched_intermediate(
            parameters, lambda n: preset_config(preset, "tiny", **overrides, intermediate_size=n))
    torch.manual_seed(0)
    return from_preset(preset, "tiny", **overrides)


@functools.cache
def anchor_parameters() -> int | None:
    """titans-pytorch's MAC's parameter count (``None`` without the package): ours are matched to it."""
    theirs = titans_pytorch_mac()
    return None if theirs is None else sum(p.numel() for p in theirs.parameters())


def build(name: str):
    return titans_pytorch_mac() if name == THEIRS else ours(name, anchor_parameters())


def loss_of(model, ids):
    if hasattr(model, "config"):  # ours: a transformers causal LM
        return model(input_ids=ids, labels=ids).loss
    return model(ids, return_loss=True)


def step(model, optimizer, ids, check: bool = False) -> float:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(model, ids)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    if check and not (bool(torch.isfinite(loss)) and all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())):
        raise FloatingPointError(f"{type(model).__name__}: non-finite loss or gradient")
    return seconds


def tokens(settings: dict) -> torch.Tensor:
    return torch.randint(0, 256, (settings["batch"], settings["length"]), generator=torch.Generator().manual_seed(0))


def peak_child(name: str, batch: int, length: int) -> None:
    """Subprocess body: extra resident bytes of one training step after a warm-up step, as JSON."""
    mc.setup_torch()
    model = build(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = tokens(dict(batch=batch, length=length))
    step(model, optimizer, ids)
    mc.release_memory()
    reset = mc.reset_rss_peak()
    baseline = mc.proc_status_bytes("VmRSS" if reset else "VmHWM")
    step(model, optimizer, ids)
    print(json.dumps({"peak_bytes": mc.proc_status_bytes("VmHWM") - baseline, "hwm_reset": reset}))


def measure_peak(name: str, settings: dict) -> int | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", name, str(settings["batch"]),
           str(settings["length"])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"] if done.returncode == 0 else None


def median_step_seconds(models: dict, ids: torch.Tensor, repeats: int, around: dict | None = None) -> dict:
    """Each model's median training-step time on ``ids``: a checked warm-up step each (finite loss and gradients),
    then ``repeats`` rounds alternating between the models (AdamW, lr 1e-4). ``around``: per model name, a context
    manager factory its whole steps (forward, backward, update) run in."""
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    around = around or {}

    def timed(name, check=False):
        with around.get(name, contextlib.nullcontext)():
            return step(models[name], optimizers[name], ids, check=check)

    for name in models:
        timed(name, check=True)
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name in models:
            times[name].append(timed(name))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def run(settings: dict, names: list[str]) -> dict:
    setup = mc.setup_torch()
    models = {name: build(name) for name in names}
    models = {name: model for name, model in models.items() if model is not None}
    medians = median_step_seconds(models, tokens(settings), settings["repeats"])
    rows = {}
    for name, model in models.items():
        seconds = medians[name]
        peak = measure_peak(name, settings)
        rows[name] = dict(parameters=sum(p.numel() for p in model.parameters()), seconds=seconds,
                          tokens_per_s=settings["batch"] * settings["length"] / seconds,
                          peak_mb=None if peak is None else peak / 2**20)
        print(f"  {name:20s} {rows[name]['tokens_per_s']:8.0f} tok/s, peak {rows[name]['peak_mb']} MB", flush=True)
    return {"settings": settings, "machine": mc.machine_info(setup), "load": mc.cpu_load(),
            "source": mc.source_info(), "titans_pytorch": TITANS_PYTORCH, "rows": rows}


def markdown(data: dict) -> str:
    s, rows = data["settings"], data["rows"]
    anchor = rows.get(THEIRS)
    header = ["model", "parameters", "s / step", "tokens/s", f"vs {THEIRS}", "peak MB"]
    table = [[name, f"{r['parameters'] / 1e6:.2f}M", f"{r['seconds']:.2f}", f"{r['tokens_per_s']:,.0f}",
              f"{anchor['seconds'] / r['seconds']:.2f}×" if anchor else "—",
              "—" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f}"] for name, r in rows.items()]
    return (f"# LM training step\n\nGenerated by `python benchmarks/training_step.py` (the script's docstring gives "
            f"the protocol): batch {s['batch']} × {s['length']} byte tokens, loss + backward + AdamW, medians of "
            f"{s['repeats']} alternating rounds, {mc.provenance(data)}.\n\n" + markdown_table(header, table))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peak-child"]:
        peak_child(argv[1], int(argv[2]), int(argv[3]))
        return
    models_benchmark_main(argv, doc=__doc__, models=[THEIRS, *PRESETS], settings=dict(full=FULL, quick=QUICK),
                          run=run, markdown=markdown, out=OUT, mark=NOTES_MARK)


if __name__ == "__main__":
    main()
