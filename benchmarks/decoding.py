"""Decoding speed (issue 13, target 3): cached greedy generation of every architecture, beside the uncached
recomputation and titans-pytorch's MAC.

Models: the issue's reference size — 4 layers, width 256, 4 heads of 64, the tiny preset's other settings — with
titans-pytorch's README attention sizes (segments and sliding windows of 128 tokens, 4 persistent tokens), one per
architecture: ``lmm`` (titans-lmm), ``mac``, ``mag``, ``mal`` (the Titans blocks), ``hybrid`` (Titans' memory
alternating with sliding-window attention), ``hope``, ``tnt`` and ``transformer++``.

Generation: ``model.generate`` (transformers) from a 16-token prompt, greedy, exactly ``new_tokens`` new tokens
(128), batch 1 and 16, one thread, denormals flushed. ``cached``: the decoding cache (O(1) state per memory
layer); ``uncached``: ``use_cache=False``, the whole prefix recomputed for every token. Every model's logits are
checked finite first; rounds alternate between the models; the figure is the median over ``repeats`` rounds
(the uncached one: one round). titans-pytorch's ``MemoryAsContextTransformer`` at its README configuration
(``num_tokens=256, dim=256, depth=2, segment_len=128, num_persist_mem_tokens=4, num_longterm_mem_tokens=16``)
generates with its own ``sample(..., use_cache=True, temperature=0)`` in the same rounds (an optional benchmark
dependency, ``pip install -e ".[bench]"``).

Bounds printed with the table: the **weight-streaming floor** (every parameter read once per decoding step at the
single-thread matrix–vector bandwidth measured here, a 4096² fp32 ``mv``), the **linear floor** (the model's own
``nn.Linear`` layers applied to one token in turn: their matrix–vector products alone, at the model's shapes, whose
weights of a few hundred KB stream slower than one 64 MiB matrix) and the **op count** per step (top-level ATen
calls, each a few µs of eager-PyTorch dispatch at batch 1).

Writes ``docs/decoding.md`` and its JSON twin (``--out``); the Markdown keeps hand-written notes below
``NOTES_MARK``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc  # noqa: E402

from nestedmemory.models import from_preset  # noqa: E402
from nestedmemory.models.modeling import cache_of  # noqa: E402
from nestedmemory.tasks.report import markdown_table, models_benchmark_main  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "decoding.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/decoding.py keeps everything after this line. -->"
SIZE = dict(hidden_size=256, num_hidden_layers=4, num_heads=4)
ATTENTION = dict(segment_size=128, window=128, persistent_tokens=4)  # titans-pytorch's README sizes
#: architecture -> (preset, overrides)
MODELS = {"lmm": ("titans-lmm", {}), "mac": ("titans-mac", ATTENTION), "mag": ("titans-mag", ATTENTION),
          "mal": ("titans-mal", ATTENTION), "hybrid": ("titans-lmm", dict(architecture="hybrid", window=128)),
          "hope": ("hope", {}), "tnt": ("tnt", {}), "transformer++": ("transformer++", {})}
TITANS_PYTORCH = dict(num_tokens=256, dim=256, depth=2, segment_len=128, num_persist_mem_tokens=4,
                      num_longterm_mem_tokens=16)
FULL = dict(batches=[1, 16], new_tokens=128, prompt=16, repeats=3)
QUICK = dict(batches=[1], new_tokens=16, prompt=16, repeats=1)


def build(name: str):
    preset, overrides = MODELS[name]
    torch.manual_seed(0)
    return from_preset(preset, size="tiny", **SIZE, **overrides).eval()


def titans_pytorch_mac():
    """titans-pytorch's MAC at its README configuration, or ``None`` where the package is not installed."""
    try:
        from titans_pytorch import MemoryAsContextTransformer
    except ImportError:
        return None
    torch.manual_seed(0)
    return MemoryAsContextTransformer(**TITANS_PYTORCH).eval()


def prompt(batch: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(batch))


@torch.no_grad()
def check_finite(model, ids) -> None:
    logits = model(ids).logits
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError(f"{type(model).__name__}: non-finite logits before timing")


@torch.no_grad()
def generate_seconds(model, ids, new_tokens: int, cached: bool) -> float:
    """Wall seconds of greedy generation of exactly ``new_tokens`` tokens."""
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         use_cache=cached, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return seconds


@torch.no_grad()
def titans_pytorch_seconds(model, ids, new_tokens: int) -> float:
    start = time.perf_counter()
    out = model.sample(ids, ids.shape[1] + new_tokens, use_cache=True, temperature=0.0, show_progress=False)
    seconds = time.perf_counter() - start
    assert out.shape[1] == new_tokens and bool(torch.isfinite(out.float()).all())
    return seconds


@torch.no_grad()
def ops_per_step(model, ids) -> int:
    """Top-level ATen calls of one cached decoding step at batch ``len(ids)``."""
    from torch.profiler import profile

    out = model(ids, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    with profile() as prof:
        model(token, cache=cache_of(out), use_cache=True)
    return sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))


def mv_bandwidth(rounds: int = 20) -> float:
    """Single-thread fp32 matrix–vector bandwidth (bytes/s) on a 4096² matrix (64 MiB: streamed from memory)."""
    w, v = torch.randn(4096, 4096), torch.randn(4096)
    for _ in range(3):
        torch.mv(w, v)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mv(w, v)
        times.append(time.perf_counter() - start)
    return w.numel() * 4 / statistics.median(times)


def linear_floor_seconds(model, rounds: int = 7) -> float:
    """Seconds per decoding step of the model's own matrix–vector products alone: every ``nn.Linear`` applied to one
    token in turn (its weight streamed once, at the shape the model has; the median of ``rounds`` passes over all
    of them, after one to warm up). Small weights stream slower than a 64 MiB ``mv`` (``mv_bandwidth``)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, m.in_features) for m in linears]
    times = []
    with torch.no_grad():
        for _ in range(rounds + 1):
            start = time.perf_counter()
            for m, x in zip(linears, inputs):
                m(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def run(settings: dict, names: list[str]) -> dict:
    setup = mc.setup_torch()
    torch.set_num_threads(1)  # the target is one thread
    setup["threads"] = 1
    models = {name: build(name) for name in names}
    theirs = titans_pytorch_mac()
    bandwidth = mv_bandwidth()
    rows = {name: {"parameters": sum(p.numel() for p in m.parameters()), "cached": {}, "uncached": {},
                   "ops_per_step": {}} for name, m in models.items()}
    if theirs is not None:
        rows["titans-pytorch MAC"] = {"parameters": sum(p.numel() for p in theirs.parameters()), "cached": {},
                                      "uncached": {}, "ops_per_step": {}}
    for name, model in models.items():
        rows[name]["linear_floor_tokens_per_s_batch1"] = 1 / linear_floor_seconds(model)
    for batch in settings["batches"]:
        ids = prompt(batch, settings["prompt"], 256)
        for name, model in models.items():
            check_finite(model, ids)
            rows[name]["ops_per_step"][batch] = ops_per_step(model, ids)
        times = {name: [] for name in rows}
        for _ in range(settings["repeats"]):  # rounds alternate between the models
            for name, model in models.items():
                times[name].append(generate_seconds(model, ids, settings["new_tokens"], cached=True))
            if theirs is not None:
                times["titans-pytorch MAC"].append(titans_pytorch_seconds(theirs, ids, settings["new_tokens"]))
        for name, seconds in times.items():
            rows[name]["cached"][batch] = batch * settings["new_tokens"] / statistics.median(seconds)
        for name, model in models.items():
            seconds = generate_seconds(model, ids, settings["new_tokens"], cached=False)
            rows[name]["uncached"][batch] = batch * settings["new_tokens"] / seconds
        print(f"batch {batch} done", flush=True)
    for row in rows.values():
        row["weight_floor_tokens_per_s_batch1"] = bandwidth / (4 * row["parameters"])
    return {"settings": settings, "machine": mc.machine_info(setup), "load": mc.cpu_load(),
            "source": mc.source_info(), "mv_bandwidth_GBps": bandwidth / 1e9, "rows": rows,
            "titans_pytorch": TITANS_PYTORCH if theirs is not None else None}


def markdown(data: dict) -> str:
    batches = data["settings"]["batches"]
    header = ["model", "parameters"] + [f"{kind} B={b}" for b in batches for kind in ("cached", "uncached")] + \
        [f"ops / step B={batches[0]}", "weight floor B=1", "linear floor B=1"]
    ours = data["rows"].get("mac", {}).get("cached", {})
    table = []
    for name, row in data["rows"].items():
        cells = [name, f"{row['parameters'] / 1e6:.2f}M"]
        for b in batches:
            b = str(b) if str(b) in row["cached"] else b
            cells += [f"{row['cached'][b]:,.0f}", f"{row['uncached'][b]:,.0f}" if b in row["uncached"] else "—"]
        ops = row["ops_per_step"].get(str(batches[0]), row["ops_per_step"].get(batches[0]))
        linear = row.get("linear_floor_tokens_per_s_batch1")
        cells += [ops if ops is not None else "—", f"{row['weight_floor_tokens_per_s_batch1']:,.0f}",
                  "—" if linear is None else f"{linear:,.0f}"]
        table.append(cells)
    theirs = data["rows"].get("titans-pytorch MAC", {}).get("cached", {})
    ratio = ""
    if theirs and ours:
        key = next(iter(ours))
        ratio = f"Cached MAC vs titans-pytorch's MAC at batch 1: **{ours[key] / theirs[key]:.2f}×**.\n\n"
    s = data["settings"]
    return (f"# Decoding speed\n\nGenerated by `python benchmarks/decoding.py` (the script's docstring gives the "
            f"protocol). Tokens/s of greedy generation ({s['new_tokens']} new tokens after {s['prompt']}), one "
            f"thread, medians of {s['repeats']} alternating rounds (uncached: one); machine "
            f"{data['machine']['cpu_model']}, torch {data['machine']['torch']}, load "
            f"{data['load'].get('loadavg_1m', float('nan')):.2f}, code {data['source']['repo_head']}. Weight floor: "
            f"parameter bytes at the measured single-thread mv bandwidth {data['mv_bandwidth_GBps']:.1f} GB/s; "
            f"linear floor: the model's own `nn.Linear` layers applied to one token, one after another (their "
            f"matrix–vector products alone, at the model's shapes).\n\n"
            + markdown_table(header, table) + "\n" + ratio)


def main(argv=None) -> None:
    models_benchmark_main(argv, doc=__doc__, models=list(MODELS), settings=dict(full=FULL, quick=QUICK), run=run,
                          markdown=markdown, out=OUT, mark=NOTES_MARK)


if __name__ == "__main__":
    main()
