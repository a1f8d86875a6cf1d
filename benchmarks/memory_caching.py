"""Memory Caching (issue 14; MC = Behrouz et al., arXiv 2602.24281): exactness and speed against the
``memory-caching`` package, the cost of caching against the base model, and recall at a fixed state size.

Sections (``--section``, default all; ``--quick`` shrinks each):

- ``package``: our caching layer next to ``memory_caching.MemoryCachingLayer`` 0.1.0 (kmccleary3301, PyPI; an
  optional benchmark dependency) at a matched configuration: its ``linear`` backend (``M += v kᵀ``, ``y = M q``) is
  our matrix memory with the dot bias, GD, no retention and the step fixed at 1; its context is the sum of each
  head's keys and ``u`` a per-head projection of ``x`` (our ``pool="keys"``); the same ``q, k, v, u`` and output
  projections. Outputs compared in fp64 for RM / GRM / Soup / SSC × checkpoint / restart (= our ``independent``
  from the zero state); then fwd+bwd time of both, alternating, medians, one thread. Its ``titans`` backend is not
  compared: with its default ``update_convention="paper"`` it steps ``S ← ηS − θ∇`` and ``M ← M + S`` on the
  printed Titans equations read as ascent (NEXT-WAVE §1.1), its MLP memory starts at zero and its gates are
  constants — not the same model as ours.
- ``overhead``: fwd+bwd tokens/s and the peak extra memory of one fwd+bwd (a fresh subprocess each: VmHWM after,
  minus VmRSS before) of the tiny ``titans-lmm`` and ``dla`` without and with RM / GRM / SSC, segments of 256 (MC's
  LM setting), batch 1, T = 1K … 8K, one thread, alternating, medians, outputs and gradients checked finite first.
- ``recall``: the MQAR protocol of ``benchmarks/recall.py`` (Zoology mix, V 128, batch 64, AdamW 1e-3) at a fixed
  state size per segment: ``titans-lmm`` (width 64) without caching and with RM, GRM, Soup, SSC and Log-Linear++
  (GRM over logarithmic segments), segments of 32 tokens (the tiny default), 2,000 steps, two processes of one
  thread. Titans takes its momentum-free step (``learner="gd"``, the paper's ablation row): on this protocol the
  momentum Titans leaves chance after 1,000–2,500+ steps depending on the seed, the momentum-free one by ≈ 1,000
  (docs/recall.md, "budget-titans-fixed"), so only it separates the variants within a CPU budget.

Writes ``docs/memory_caching.md`` and ``.json`` (each section replaces its part); prints the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc  # noqa: E402

from nestedmemory.layers import MemoryMixer  # noqa: E402
from nestedmemory.memory import MemoryRule  # noqa: E402
from nestedmemory.models import from_preset, preset_config  # noqa: E402
from nestedmemory.tasks.report import write_keeping_notes  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "memory_caching.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/memory_caching.py keeps everything after this line. -->"
AGGREGATIONS = {"residual": "residual", "grm": "gated", "soup": "soup", "ssc": "sparse"}  # theirs -> ours
INITS = {"checkpoint": "checkpoint", "restart": "independent"}
PKG = dict(d_model=64, num_heads=4, segment=64, batch=2, length=300, speed_length=1024, speed_batch=2, top_k=2)
OVERHEAD = dict(presets=["titans-lmm", "dla"], variants=["base", "residual", "gated", "sparse"], segment=256,
                lengths=[1024, 2048, 4096, 8192], repeats=3)
QUICK_OVERHEAD = dict(OVERHEAD, lengths=[1024, 2048], repeats=2)
RECALL = dict(presets=["titans-lmm"], overrides={"learner": "gd"}, variants=["base", "residual", "gated", "soup",
              "sparse", "log"], segment=32, seeds=[0], steps=2000, workers=2)
QUICK_RECALL = dict(RECALL, variants=["base", "gated"], steps=600)
NIAH = dict(preset="titans-lmm", variants=["base", "residual", "gated", "soup", "sparse", "log"], segment=32,
            train_length=256, steps=300, batch_size=8, lr=2e-3, lengths=[256, 512, 1024, 2048], n=32, seed=0)
QUICK_NIAH = dict(NIAH, variants=["base", "gated", "log"], lengths=[256, 1024])


# ---------------------------------------------------------------------------------------------- package
class UnitStep(MemoryMixer):
    """Our matrix memory with the step fixed at 1 (``M += v kᵀ``), the package's ``linear`` backend."""

    def gates(self, x):
        return {"lr": x.new_ones(*x.shape[:2], self.heads)}


class Ours(nn.Module):
    """Our caching layer behind the package layer's own projections (``q, k, v, u, o``): the same function."""

    def __init__(self, theirs, aggregation: str, init: str):
        super().__init__()
        c = theirs.config
        rule = MemoryRule(memory="linear", objective="dot", retention="none", learner="gd", chunk_size=16)
        caching = dict(segment=c.segment_size, aggregation=aggregation, init=init, pool="keys",
                       **({"top_k": c.ssc_top_k} if aggregation == "sparse" else {}))
        self.theirs, self.heads = theirs, c.num_heads
        self.mixer = UnitStep(c.d_model, c.num_heads, rule=rule, caching=caching)
        if self.mixer.caching.u_proj is not None:
            self.mixer.caching.u_proj.weight = theirs.u_proj.weight

    def forward(self, x):
        split = lambda t: t.unflatten(-1, (self.heads, -1))  # noqa: E731
        t = self.theirs
        q, k, v = split(t.q_proj(x)), split(t.k_proj(x)), split(t.v_proj(x))
        out, _ = self.mixer.caching.mix(self.mixer, q, k, v, x, None, False)
        return t.o_proj(out.flatten(-2))


def package():
    """The ``memory_caching`` package (this script's folder, where the name is this file's, left off the path)."""
    here = Path(__file__).resolve().parent
    cached = sys.modules.get("memory_caching")
    if cached is not None and Path(getattr(cached, "__file__", "") or ".").resolve().parent == here:
        del sys.modules["memory_caching"]  # this script, imported under the package's name
    saved = sys.path[:]
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        import memory_caching
    finally:
        sys.path = saved
    return memory_caching


def package_layer(aggregation: str, init: str, dtype):
    pkg = package()
    torch.manual_seed(0)
    config = pkg.MCConfig(d_model=PKG["d_model"], num_heads=PKG["num_heads"], backend="linear",
                          aggregation=aggregation, segment_size=PKG["segment"], state_init_mode=init,
                          ssc_top_k=PKG["top_k"])
    layer = pkg.MemoryCachingLayer(config=config, backend=pkg.LinearMemoryBackend()).to(dtype)
    for p in layer.parameters():  # the package's default init, rescaled so that sums of 300 keys stay O(1)
        p.data.mul_(0.3)
    return layer


def section_package(quick: bool) -> dict:
    rows = []
    x = torch.randn(PKG["batch"], PKG["length"], PKG["d_model"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    for theirs_agg, ours_agg in AGGREGATIONS.items():
        for theirs_init, ours_init in INITS.items():
            theirs = package_layer(theirs_agg, theirs_init, torch.float64)
            ours = Ours(theirs, ours_agg, ours_init).double()
            a, b = theirs(x), ours(x)
            rows.append(dict(aggregation=ours_agg, init=ours_init, max_abs_diff=(a - b).abs().max().item(),
                             output_scale=a.abs().max().item()))
    lengths = [PKG["speed_length"]] if quick else [PKG["speed_length"], 2 * PKG["speed_length"]]
    speed = []
    for length in lengths:
        x = torch.randn(PKG["speed_batch"], length, PKG["d_model"], generator=torch.Generator().manual_seed(2))
        theirs = package_layer("grm", "checkpoint", torch.float32)
        impls = {"memory-caching": theirs, "nestedmemory": Ours(theirs, "gated", "checkpoint")}
        times = time_alternating(impls, x, repeats=3 if quick else 5)
        speed.append(dict(length=length, **{f"{n}_s": times[n] for n in impls},
                          speedup=times["memory-caching"] / times["nestedmemory"]))
    return dict(version=package().__version__, settings=PKG, exactness=rows, speed=speed)


# ---------------------------------------------------------------------------------------------- timing
def fwd_bwd(module, x, check: bool = False):
    for p in module.parameters():
        p.grad = None
    start = time.perf_counter()
    out = module(x)
    out = out if isinstance(out, torch.Tensor) else out.logits
    out.float().square().mean().backward()
    seconds = time.perf_counter() - start
    if check:
        bad = not bool(torch.isfinite(out).all()) or any(
            p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in module.parameters())
        if bad:
            raise FloatingPointError(f"{type(module).__name__}: non-finite output or gradient")
    return seconds


def time_alternating(impls: dict, x, repeats: int) -> dict:
    """One checked warm-up each, then ``repeats`` rounds alternating the implementations; median seconds."""
    for module in impls.values():
        fwd_bwd(module, x, check=True)
    times = {name: [] for name in impls}
    for _ in range(repeats):
        for name, module in impls.items():
            times[name].append(fwd_bwd(module, x))
    mc.release_memory()
    return {name: statistics.median(t) for name, t in times.items()}


def variant_model(preset: str, variant: str, segment: int, **overrides):
    """The tiny ``preset`` without caching (``base``), with an aggregation, or ``log`` (GRM over logarithmic
    segments: Log-Linear++)."""
    torch.manual_seed(0)
    if variant == "base":
        return from_preset(preset, **overrides)
    return from_preset(preset, memory=dict(preset_config(preset).memory, caching=caching_of(variant, segment)),
                       **overrides)


def caching_of(variant: str, segment: int) -> dict:
    """The ``caching`` options of a variant: an aggregation, or ``log`` (Log-Linear++)."""
    if variant == "log":
        return dict(segment=segment, aggregation="gated", segmentation="log")
    return dict(segment=segment, aggregation=variant)


def tokens(length: int):
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(length))


class Logits(nn.Module):
    """A causal LM as ``ids -> logits`` (the timing helpers take one input)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def peak_child(preset: str, variant: str, segment: int, length: int) -> None:
    """Subprocess body: extra resident bytes of one cold fwd+bwd (as ``benchmarks/layers.py``), as JSON."""
    mc.setup_torch()
    torch.set_num_threads(1)
    module = Logits(variant_model(preset, variant, segment))
    fwd_bwd(module, tokens(64))
    for p in module.parameters():
        p.grad = None
    mc.release_memory()
    reset = mc.reset_rss_peak()
    baseline = mc.proc_status_bytes("VmRSS" if reset else "VmHWM")
    fwd_bwd(module, tokens(length))
    print(json.dumps({"peak_bytes": mc.proc_status_bytes("VmHWM") - baseline, "hwm_reset": reset}))


def measure_peak(preset: str, variant: str, segment: int, length: int) -> int | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", preset, variant, str(segment), str(length)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"] if done.returncode == 0 else None


def section_overhead(quick: bool) -> dict:
    settings = QUICK_OVERHEAD if quick else OVERHEAD
    rows = []
    for preset in settings["presets"]:
        models = {v: Logits(variant_model(preset, v, settings["segment"])) for v in settings["variants"]}
        for length in settings["lengths"]:
            times = time_alternating(models, tokens(length), settings["repeats"])
            for variant in settings["variants"]:
                peak = measure_peak(preset, variant, settings["segment"], length)
                rows.append(dict(preset=preset, variant=variant, length=length, seconds=times[variant],
                                 tokens_per_s=length / times[variant], vs_base=times["base"] / times[variant],
                                 peak_mb=None if peak is None else peak / 2**20))
                print(f"  {preset:10s} {variant:8s} T={length:5d} {length / times[variant]:8.0f} tok/s "
                      f"({times['base'] / times[variant]:.2f}x base), peak {rows[-1]['peak_mb']} MB", flush=True)
    return dict(settings=settings, rows=rows)


# ---------------------------------------------------------------------------------------------- recall
def section_recall(quick: bool) -> dict:
    import recall

    settings = QUICK_RECALL if quick else RECALL
    protocol = dict(recall.PROTOCOL, steps=settings["steps"])
    cachings = {v: {} if v == "base" else {"caching": caching_of(v, settings["segment"])} for v in settings["variants"]}
    runs = [(preset, dict(settings["overrides"], **cachings[v])) for preset in settings["presets"]
            for v in settings["variants"]]
    jobs = recall.jobs_of(runs, [64], settings["seeds"], protocol, recall.TRAIN_MIX, recall.TEST_CELLS)
    results = []
    for record in recall.run_jobs(jobs, settings["workers"]):
        caching = record["memory"].get("caching")
        record["variant"] = "base" if caching is None else \
            "log" if caching.get("segmentation") == "log" else caching["aggregation"]
        results.append({k: record[k] for k in ("preset", "variant", "seed", "accuracy", "final_loss", "state",
                                               "train_seconds")})
    order = {v: i for i, v in enumerate(settings["variants"])}
    results.sort(key=lambda r: (r["preset"], order[r["variant"]], r["seed"]))
    return dict(settings=settings, protocol=protocol, train_mix=recall.TRAIN_MIX, runs=results)


def section_niah(quick: bool) -> dict:
    """S-NIAH-1 (passkey) at growing length: trained at ``train_length``, scored at every length (exact match of the
    7-digit value)."""
    from nestedmemory.tasks import niah, train_on_task

    settings = QUICK_NIAH if quick else NIAH
    rows = []
    for variant in settings["variants"]:
        model = variant_model(settings["preset"], variant, settings["segment"])
        start = time.perf_counter()
        losses = train_on_task(model, niah, steps=settings["steps"], batch_size=settings["batch_size"],
                               lr=settings["lr"], seed=settings["seed"], seq_len=settings["train_length"],
                               variant="passkey")
        seconds = time.perf_counter() - start
        with torch.no_grad():
            scores = niah.evaluate(model, n=settings["n"], seed=10**6, batch_size=8, lengths=settings["lengths"])
        tail = losses[-20:]
        rows.append(dict(variant=variant, final_loss=sum(tail) / len(tail), train_seconds=round(seconds),
                         accuracy={str(k): v for k, v in scores["length"].items()}))
        print(f"  {variant:8s} loss {rows[-1]['final_loss']:.3f}: " + " ".join(
            f"{k} {100 * v:.0f}%" for k, v in rows[-1]["accuracy"].items()), flush=True)
    return dict(settings=settings, rows=rows)


# ---------------------------------------------------------------------------------------------- output
def plot(data: dict, path: Path) -> bool:
    """Left: S-NIAH-1 accuracy against the length per variant; right: fwd+bwd tokens/s against T per variant and
    preset (log-log). False if neither section has results."""
    if not data.get("niah", {}).get("rows") and not data.get("overhead", {}).get("rows"):
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for row in data.get("niah", {}).get("rows", []):
        lengths = [int(n) for n in row["accuracy"]]
        left.plot(lengths, [100 * a for a in row["accuracy"].values()], marker="o", label=row["variant"])
    left.set(xscale="log", xlabel="haystack length (bytes)", ylabel="passkey exact match (%)", ylim=(-3, 103),
             title="S-NIAH-1 (trained at 256)")
    if left.lines:
        left.legend(fontsize=7)
    rows = data.get("overhead", {}).get("rows", [])
    for preset in dict.fromkeys(r["preset"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            points = [(r["length"], r["tokens_per_s"]) for r in rows
                      if (r["preset"], r["variant"]) == (preset, variant)]
            right.plot(*zip(*points), marker="o", linestyle="-" if preset == rows[0]["preset"] else "--",
                       label=f"{preset} {variant}")
    right.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel="fwd+bwd tokens/s", title="cost of caching")
    if right.lines:
        right.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_markdown(path: Path, data: dict, figure: str | None = None) -> None:
    """The tables (and the figure), then the hand-written notes kept from the file after :data:`NOTES_MARK`."""
    text = markdown(data) + (f"\n![Memory Caching]({figure})\n" if figure else "")
    write_keeping_notes(path, text, NOTES_MARK)


def megabytes(value) -> str:
    return "" if value is None else f"{value:.0f}"


def markdown(data: dict) -> str:
    lines = ["# Memory Caching: exactness, cost and recall", "",
             "Produced by `python benchmarks/memory_caching.py` (see its docstring for the protocol); "
             f"machine: {data.get('machine', {}).get('cpu_model', '?')}, torch {data.get('machine', {}).get('torch')}.",
             ""]
    if "package" in data:
        p = data["package"]
        lines += [f"## Against `memory-caching` {p['version']} (linear backend, fp64 outputs)", "",
                  "| aggregation | init | max abs diff | output scale |", "|---|---|---|---|"]
        lines += [f"| {r['aggregation']} | {r['init']} | {r['max_abs_diff']:.1e} | {r['output_scale']:.2f} |"
                  for r in p["exactness"]]
        lines += ["", "fwd+bwd, GRM, batch 2, width 64 (4 heads), segments of 64, one thread (medians):", "",
                  "| T | memory-caching (s) | nestedmemory (s) | speed-up |", "|---|---|---|---|"]
        lines += [f"| {r['length']} | {r['memory-caching_s']:.3f} | {r['nestedmemory_s']:.4f} | "
                  f"{r['speedup']:.0f}× |" for r in p["speed"]]
        lines.append("")
    if "overhead" in data:
        o = data["overhead"]
        lines += [f"## Cost of caching (tiny presets, batch 1, segments of {o['settings']['segment']}, one thread)",
                  "", "| preset | variant | T | tokens/s | × base speed | peak MB |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['variant']} | {r['length']} | {r['tokens_per_s']:.0f} | {r['vs_base']:.2f} "
                  f"| {megabytes(r['peak_mb'])} |" for r in o["rows"]]
        lines.append("")
    if "recall" in data:
        r = data["recall"]
        cells = list(r["runs"][0]["accuracy"]) if r["runs"] else []
        overrides = ", ".join(f"{k}={v}" for k, v in r["settings"].get("overrides", {}).items())
        lines += [f"## MQAR at a fixed state size (width 64, segments of {r['settings']['segment']}, "
                  f"{r['protocol']['steps']} steps{', ' + overrides if overrides else ''})", "",
                  "| preset | variant | seed | " + " | ".join(cells) + " | state floats |",
                  "|---|---|---|" + "---|" * (len(cells) + 1)]
        lines += [f"| {x['preset']} | {x['variant']} | {x['seed']} | "
                  + " | ".join(f"{100 * x['accuracy'][c]:.1f}" for c in cells) + f" | {x['state']} |"
                  for x in r["runs"]]
        lines.append("")
    if "niah" in data:
        n = data["niah"]
        lengths = list(n["rows"][0]["accuracy"]) if n["rows"] else []
        lines += [f"## S-NIAH-1 (passkey) at growing length ({n['settings']['preset']}, trained at "
                  f"{n['settings']['train_length']} for {n['settings']['steps']} steps, segments of "
                  f"{n['settings']['segment']})", "", "| variant | final loss | " + " | ".join(lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        lines += [f"| {r['variant']} | {r['final_loss']:.3f} | "
                  + " | ".join(f"{100 * r['accuracy'][c]:.0f}" for c in lengths) + " |" for r in n["rows"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=list(SECTIONS), action="append")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--peak-child", nargs=4, metavar=("PRESET", "VARIANT", "SEGMENT", "T"))
    args = parser.parse_args(argv)
    if args.peak_child:
        preset, variant, segment, length = args.peak_child
        return peak_child(preset, variant, int(segment), int(length))
    setup = mc.setup_torch()
    torch.set_num_threads(1)
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {}
    data["machine"] = mc.machine_info(dict(setup, threads=1))
    for name in args.section or list(SECTIONS):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        data[name] = dict(SECTIONS[name](args.quick), quick=args.quick, seconds=round(time.perf_counter() - start, 1),
                          load=mc.cpu_load())
        path.write_text(json.dumps(data, indent=1))
        write_markdown(args.out, data)
    if plot(data, args.out.with_suffix(".png")):
        write_markdown(args.out, data, figure=args.out.with_suffix(".png").name)
    print(markdown(data))
    bad = [r for r in data.get("package", {}).get("exactness", []) if not r["max_abs_diff"] < 1e-9]
    if bad:
        raise SystemExit(f"outputs differ from memory-caching: {bad}")


SECTIONS = {"package": section_package, "overhead": section_overhead, "recall": section_recall,
            "niah": section_niah}


if __name__ == "__main__":
    main()
