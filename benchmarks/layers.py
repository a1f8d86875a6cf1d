"""Layer benchmark: our NeuralMemory vs titans-pytorch, and every token mixer's fwd+bwd throughput vs T on CPU.

Part 1 (issue acceptance). Our ``NeuralMemory`` layer next to ``titans_pytorch.NeuralMemory`` at matched settings
(dim 256, 4 heads of 64, chunk 64, depth-2 GELU memory MLP with titans-pytorch's default expansion 4, momentum and
weight decay on, q/k normalised, SiLU on the projections, per-head output norm, matched gate initialisations), at
``B = 4`` and ``T`` in 1024, 4096: fwd+bwd tokens/s, the peak extra memory of one fwd+bwd, the ratio ours / theirs
and the achieved GFLOP/s of our chunked fast path against a measured fp32 matmul peak. Also timed: titans-pytorch
with ``batch_size = chunk`` (its gradient point then moves every chunk, as ours does; the default takes every
chunk's gradient at the initial weights) and ours with the memory LayerNorm (titans-pytorch's ``ResidualNorm``).

Part 2. Every mixer's fwd+bwd tokens/s vs ``T`` (512 .. 16K) at ``B = 1``, dim 256, 4 heads, chunk 64, next to the
Transformer++ attention layer (global causal, SDPA): Titans (MLP depth 2 / matrix), Moneta, Yaad, Memora,
OmegaNet, Atlas, DeltaNet, Gated DeltaNet, Mamba2, linear attention, DeepTransformer (exact ``exp`` kernel memory:
O(T²)). Per mixer, the crossover length where it overtakes attention, and a log-log plot.

Measurement rules (shared with ``memory_core.py``, whose helpers are imported): flush-denormal on; the thread count
set explicitly (``--threads``, default the physical cores); per config one warm-up per implementation that also
checks the output and all gradients are finite (a non-finite config is recorded and not timed); then the compared
implementations alternate run by run for ``--repeats`` rounds (one timed run only for an implementation whose
warm-up took longer than ``SLOW_S``); the median is reported. Each run also records the share of its wall time
during which some task waited for a CPU (Linux PSI). The load average is recorded before and after every measurement
block; above ``LOAD_WARN`` a WARNING is printed: other processes were running and the numbers are indicative only. A
(mixer, T) is skipped once a smaller T of that mixer took longer than ``SKIP_S`` for one fwd+bwd, or ran out of
memory (the sweep runs under an address-space limit, ``--mem-limit-gb``, so an allocation fails cleanly instead of
the kernel's OOM killer taking the machine down). Peak memory: as ``memory_core.py``, a fresh subprocess per
(implementation, T): VmHWM after one cold fwd+bwd minus VmRSS before it, after a one-chunk warm-up and a
``malloc_trim``; the module's parameters are allocated before the baseline, their gradients count.

``--markdown JSON`` prints the tables of a result file as Markdown (for ``docs/benchmarks_layers.md``); ``--refresh
JSON`` recomputes a result file's crossovers, table and plot from its stored timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc

from nestedmemory.layers import Attention, MemoryMixer, NeuralMemory
from nestedmemory.memory import MemoryRule

DIM, HEADS, HEAD_DIM, CHUNK, DEPTH = 256, 4, 64, 64, 2
EXPANSION = 4            # titans-pytorch's default MemoryMLP expansion_factor (NeuralMemory.default_model_kwargs)
CMP_B, CMP_T, CMP_T_QUICK = 4, (1024, 4096), (1024,)
SWEEP_B = 1
SWEEP_T = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_MAX_T = 2048
SKIP_S = 60.0            # skip larger T of a mixer once one fwd+bwd took longer than this
SLOW_S = 15.0            # an implementation whose warm-up takes longer gets one timed run only
LOAD_WARN = 1.5
RESULTS = Path(__file__).resolve().parent / "results"


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------------------------------------- part 1: layers
def ours_lr_init() -> float:
    """Our layer's initial per-token θ (``MemoryMixer``'s default ``min(0.05, 0.4 / C)``)."""
    return min(0.05, 0.4 / CHUNK)


def titans_kwargs(batch_size: int | None = None) -> dict:
    """titans-pytorch ``NeuralMemory`` arguments matched to our layer, as far as its constructor allows.

    Step size: its store loss is ``mean_d (M(k) − v)²`` (gradient ``2/D · e``), ours ``½‖M(k) − v‖²`` (gradient
    ``e``), so its lr is ours × D/2; its lr is ``sigmoid(·) · max_lr`` (max_lr 1). Momentum 0.9 and decay 0.001 at
    initialisation as ours; zero-initialised gate weights (as ours) through the ``init_*_bias`` options."""
    return dict(dim=DIM, chunk_size=CHUNK, batch_size=batch_size, heads=HEADS, dim_head=HEAD_DIM,
                default_model_kwargs=dict(depth=DEPTH, expansion_factor=float(EXPANSION)),
                momentum=True, momentum_order=1, qk_rmsnorm=True, post_rmsnorm=True, pre_rmsnorm=True,
                activation=nn.SiLU(), per_head_learned_parameters=True, use_accelerated_scan=False,
                mem_model_norm_add_residual=True,
                init_adaptive_step_bias=logit(ours_lr_init() * HEAD_DIM / 2), init_momentum_bias=logit(0.9),
                init_decay_bias=logit(0.001))


def build_titans(batch_size: int | None = None):
    import titans_pytorch

    return titans_pytorch.NeuralMemory(**titans_kwargs(batch_size))


def build_ours(layernorm: bool = False):
    layer = NeuralMemory(DIM, HEADS, HEAD_DIM, chunk_size=CHUNK, depth=DEPTH, expansion=EXPANSION)
    if layernorm:  # the same layer with the memory MLP x + LN(MLP(x)) (titans-pytorch's ResidualNorm, no gain)
        rule = dataclasses.replace(layer.rule, layernorm=True)
        layer = MemoryMixer(DIM, HEADS, HEAD_DIM, rule=rule)
    return layer


#: part-1 implementations: name -> (builder, description)
IMPLS = {
    "ours": (lambda: build_ours(), "nestedmemory.layers.NeuralMemory: token-level gates, memory evolving within "
                                   "the chunk, gradient point = memory at the end of the previous chunk"),
    "titans-pytorch": (lambda: build_titans(None), "titans_pytorch.NeuralMemory, batch_size=None (default): every "
                                                   "chunk's gradient at the initial weights, fully parallel"),
    "titans-pytorch-b64": (lambda: build_titans(CHUNK), f"titans_pytorch.NeuralMemory, batch_size={CHUNK}: the "
                                                        "gradient point moves every chunk (as ours), chunks run "
                                                        "one after another"),
    "ours-ln": (lambda: build_ours(layernorm=True), "ours with the memory LayerNorm x + LN(MLP(x)) (titans-pytorch's "
                                                    "ResidualNorm) : MemoryMixer, NeuralMemory's rule + layernorm"),
}
PRIMARY = ("ours", "titans-pytorch")

SEMANTICS = (
    "Semantic difference. Ours computes the paper's token-level gates: lr θ_t, momentum η_t and decay α_t per "
    "token, the memory evolves token by token inside the chunk and every token reads the memory after its own "
    "write (o_t = M_{W_t}(q_t)); the chunk only fixes the gradient point (the memory at the end of the previous "
    "chunk). titans-pytorch approximates: lr is per token (a loss weight), but momentum and decay are per chunk "
    "(from the chunk's mean-pooled input), a chunk's token gradients are summed into one update, and chunk n reads "
    "the memory as it was after chunk n-1 (no within-chunk evolution); with its default batch_size=None all "
    "gradients are taken at the initial weights of the call.")
ARCH_DIFF = (
    "Architecture differences left: titans-pytorch has an input RMSNorm, memory x + LN(MLP(x))·(1+γ) (γ a memory "
    "parameter), a per-head sigmoid retrieve gate and RMSNorm'd q/k (learned gain); ours has a causal depthwise "
    "conv (k=4) + SiLU on q/k/v, ℓ2-normalised q/k, memory x + MLP(x) (ours-ln adds the LayerNorm), output "
    "RMSNorm ⊙ SiLU(W_g x).")


def json_safe(value):
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return repr(value)


def settings_of_both() -> dict:
    """Full constructor settings of both layers (titans-pytorch: every argument, defaults included)."""
    import titans_pytorch

    sig = inspect.signature(titans_pytorch.NeuralMemory.__init__)
    defaults = {k: p.default for k, p in sig.parameters.items() if k != "self"}
    ours = build_ours()
    return {
        "ours": {"class": "nestedmemory.layers.NeuralMemory -> MemoryMixer", "dim": DIM, "num_heads": HEADS,
                 "head_dim": HEAD_DIM, "chunk_size": CHUNK, "depth": DEPTH, "expansion": EXPANSION,
                 "rule": repr(ours.rule), "conv_size": 4, "activation": "silu", "qk": "l2-normalised",
                 "gates_at_init": {"lr": ours_lr_init(), "lr_max": 4 * ours_lr_init(), "decay": 0.001,
                                   "momentum": 0.9, "granularity": "per token, per head"},
                 "store_loss": "0.5 * ||M(k) - v||^2", "output": "per-head RMSNorm * SiLU(W_g x) -> W_o",
                 "initial_memory": "learnable per head"},
        "titans_pytorch": {"version": titans_pytorch_version(),
                           "all_arguments": json_safe({**defaults, **titans_kwargs()}),
                           "memory_model": f"MemoryMLP(dim_head={HEAD_DIM}, depth={DEPTH}, "
                                           f"expansion_factor={EXPANSION}) wrapped in ResidualNorm",
                           "lr_at_init": ours_lr_init() * HEAD_DIM / 2,
                           "lr_note": "store loss mean_d (M(k)-v)^2 has gradient 2/D e, so lr = ours * D/2 "
                                      "gives the same step",
                           "gates": "lr per token; momentum and decay per chunk (mean-pooled chunk input)"},
        "semantics": SEMANTICS, "architecture_differences": ARCH_DIFF,
    }


def titans_pytorch_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("titans-pytorch")
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------- part 2: mixers
MLP = dict(memory="mlp", depth=2, expansion=EXPANSION)
MIRAS_MLP = dict(MLP, layernorm=True)
MATRIX = dict(memory="linear", objective="dot")
SWEEP_RULES = {
    "moneta": dict(MIRAS_MLP, objective="lp", p=3.0, retention="lq", q=4.0, learner="gd"),
    "yaad": dict(MIRAS_MLP, objective="huber", retention="decay", learner="gd"),
    "memora": dict(MIRAS_MLP, objective="l2", retention="kl", learner="gd"),
    "omeganet": dict(memory="linear", feature_map="poly", degree=2, objective="l2", retention="decay",
                     learner="omega", window=4),
    "atlas": dict(MLP, feature_map="poly", degree=2, objective="l2", retention="decay", learner="muon", window=2),
    "deltanet": dict(MATRIX, retention="none", learner="dgd"),
    "gated-deltanet": dict(MATRIX, retention="decay", learner="dgd"),
    "mamba2": dict(MATRIX, retention="decay", learner="gd"),
    "linear-attention": dict(MATRIX, retention="none", learner="gd"),
    "deeptransformer": dict(memory="linear", feature_map="exp", objective="dot", retention="none", learner="gd"),
}
ATLAS_NARROW_HEADS = 16   # extra row: Atlas with 16 heads of 16 (φ_2: 273 features), as the model presets do


def sweep_mixers() -> dict:
    """name -> (builder, settings). Attention first: it is the reference."""
    mixers = {
        "attention": (lambda: Attention(DIM, HEADS), {"class": "Attention", "dim": DIM, "num_heads": HEADS,
                                                      "kind": "global causal, RoPE, SDPA (Transformer++)"}),
        "titans": (lambda: NeuralMemory(DIM, HEADS, HEAD_DIM, chunk_size=CHUNK, depth=2, expansion=EXPANSION),
                   {"class": "NeuralMemory", "depth": 2, "expansion": EXPANSION}),
        "titans-linear": (lambda: NeuralMemory(DIM, HEADS, HEAD_DIM, chunk_size=CHUNK, depth=1),
                          {"class": "NeuralMemory", "depth": 1}),
    }
    for name, fields in SWEEP_RULES.items():
        rule = MemoryRule(**fields, chunk_size=CHUNK)
        mixers[name] = ((lambda r=rule: MemoryMixer(DIM, HEADS, HEAD_DIM, rule=r)),
                        {"class": "MemoryMixer", "heads": HEADS, "head_dim": HEAD_DIM, "rule": repr(rule)})
    rule = MemoryRule(**SWEEP_RULES["atlas"], chunk_size=CHUNK)
    hd = DIM // ATLAS_NARROW_HEADS
    mixers["atlas-hd16"] = ((lambda r=rule: MemoryMixer(DIM, ATLAS_NARROW_HEADS, hd, rule=r)),
                            {"class": "MemoryMixer", "heads": ATLAS_NARROW_HEADS, "head_dim": hd, "rule": repr(rule),
                             "note": f"extra: Atlas at head dim {hd} (φ_2 has {rule.feature_dim(hd)} features, "
                                     f"vs {rule.feature_dim(HEAD_DIM)} at head dim {HEAD_DIM})"})
    return mixers


# ---------------------------------------------------------------------------------------------- timing
def load_now() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"loadavg": [one, five, fifteen], **mc.cpu_load(), "time": time.time()}


def check_load(where: str, load: dict) -> None:
    if load["loadavg"][0] > LOAD_WARN:
        print(f"  WARNING: load average {load['loadavg'][0]:.2f} > {LOAD_WARN} {where}: other processes are "
              "running; these numbers are indicative only", flush=True)


def is_oom(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "not enough memory" in text


def fwd_bwd(module, x, check: bool = False) -> dict:
    """One fwd+bwd of ``module(x)[0].square().mean()``; wall seconds and the CPU-contention share of that time.
    ``check`` also lists non-finite outputs / gradients (``bad``)."""
    for p in module.parameters():
        p.grad = None
    x.grad = None
    stall = mc.cpu_stall_us()
    start = time.perf_counter()
    out = module(x)[0]
    out.square().mean().backward()
    seconds = time.perf_counter() - start
    contention = None if stall is None else (mc.cpu_stall_us() - stall) / 1e6 / seconds
    result = {"s": seconds, "contention": contention}
    if check:
        bad = [] if bool(torch.isfinite(out).all()) else ["output"]
        bad += ["input grad"] if not bool(torch.isfinite(x.grad).all()) else []
        bad += [f"grad {n}" for n, p in module.named_parameters()
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        result["bad"] = bad
    return result


def time_block(modules: dict, b: int, t: int, repeats: int, skip: dict, seed: int = 0) -> dict:
    """Warm-up (finite check) per module, then ``repeats`` rounds alternating the modules; per module
    ``{"warmup_s", "times_s", "contention", "status"}``. ``skip`` (name -> reason) grows with OOM / slow."""
    x = torch.randn(b, t, DIM, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    res, active = {}, []
    for name, module in modules.items():
        if name in skip:
            res[name] = {"status": "skipped", "reason": skip[name]}
            continue
        try:
            warm = fwd_bwd(module, x, check=True)
        except (RuntimeError, MemoryError) as error:
            if not is_oom(error):
                raise
            skip[name] = f"out of memory at T={t}"
            res[name] = {"status": "oom", "reason": str(error).splitlines()[0][:200]}
            print(f"    {name} T={t}: OUT OF MEMORY ({res[name]['reason'][:90]})", flush=True)
            mc.release_memory()
            continue
        if warm["bad"]:
            res[name] = {"status": "non-finite", "bad": warm["bad"][:10], "warmup_s": warm["s"]}
            print(f"    WARNING {name} T={t}: non-finite {', '.join(warm['bad'][:5])}: not timed", flush=True)
            continue
        res[name] = {"status": "ok", "warmup_s": warm["s"], "times_s": [], "contention": []}
        active.append(name)
        if warm["s"] > SKIP_S:
            skip[name] = f"one fwd+bwd took {warm['s']:.0f}s > {SKIP_S:.0f}s at T={t}"
    rounds = {n: 1 if res[n]["warmup_s"] > SLOW_S else repeats for n in active}
    for i in range(max(rounds.values(), default=0)):
        for name in active:
            if i >= rounds[name]:
                continue
            run = fwd_bwd(modules[name], x)
            res[name]["times_s"].append(run["s"])
            res[name]["contention"].append(run["contention"])
    for name in active:
        r = res[name]
        r["median_s"] = statistics.median(r["times_s"])
        r["tokens_per_s"] = b * t / r["median_s"]
    del x
    mc.release_memory()
    return res


# ---------------------------------------------------------------------------------------------- peak memory
def peak_child(impl: str, t: int, threads: int) -> None:
    """Subprocess body (as memory_core.peak_child): extra resident bytes of one cold fwd+bwd, as JSON."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = IMPLS[impl][0]()
    fwd_bwd(module, torch.randn(CMP_B, CHUNK, DIM, requires_grad=True))  # lazy initialisation, then freed
    x = torch.randn(CMP_B, t, DIM, requires_grad=True)
    for p in module.parameters():
        p.grad = None
    mc.release_memory()
    reset = mc.reset_rss_peak()
    baseline = mc.proc_status_bytes("VmRSS" if reset else "VmHWM")
    fwd_bwd(module, x)
    peak = mc.proc_status_bytes("VmHWM") - baseline
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": baseline, "hwm_reset": reset}))


def measure_peak(impl: str, t: int, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", impl, str(t), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"peak_bytes": None, "error": f"exit {done.returncode}: {done.stderr[-500:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- FLOPs
def layer_fwd_flops(rule: MemoryRule, b: int, t: int) -> dict:
    """Matmul FLOPs of our layer's forward: the memory core's chunked algorithm (``memory_core.chunked_fwd_flops``,
    counted there for ``B = memory_core.B``, scaled to ``b``) plus the layer's projections (q, k, v, g, o and the
    lr / decay / momentum gates). Conv, norms and elementwise work are not counted."""
    if (mc.H, mc.D) != (HEADS, HEAD_DIM):
        raise RuntimeError("memory_core's H, D differ from this benchmark's; FLOP accounting would be wrong")
    core = mc.chunked_fwd_flops(rule, t) * b // mc.B
    proj = 2 * b * t * DIM * (HEADS * HEAD_DIM) * 5 + 2 * b * t * DIM * HEADS * 3
    return {"core": core, "projections": proj, "total": core + proj}


def counted_flops(module, b: int, t: int) -> int | None:
    """fwd+bwd FLOPs as torch.utils.flop_counter counts them (matmuls, convs, SDPA), a cross-check."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.randn(b, t, DIM, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            module(x)[0].square().mean().backward()
        return int(counter.get_total_flops())
    except Exception as error:  # noqa: BLE001
        print(f"  (FlopCounterMode failed: {type(error).__name__}: {str(error)[:100]})")
        return None


# ---------------------------------------------------------------------------------------------- crossovers
def crossover(ts, mixer_tps, attn_tps) -> dict:
    """Shortest measured T from which on the mixer's tokens/s exceeds attention's at every longer measured T, and
    the log-log interpolated length between the last losing and that T. Not extrapolated beyond the measured
    range (the timings are too noisy for that); ``ratio`` = mixer / attention tokens/s per T."""
    pts = [(t, m / a) for t, m, a in zip(ts, mixer_tps, attn_tps) if m and a]
    if not pts:
        return {"measured": None, "estimate": None, "kind": "no data", "ratio": {}}
    ratio = dict(pts)
    first = next((i for i in range(len(pts)) if all(r > 1 for _, r in pts[i:])), None)
    if first is None:
        return {"measured": None, "estimate": None, "ratio": ratio,
                "kind": f"not reached up to T={fmt_t(pts[-1][0])} (ratio there {pts[-1][1]:.2f})"}
    if first == 0:
        return {"measured": pts[0][0], "estimate": None, "kind": "faster at every measured T", "ratio": ratio}
    (t0, r0), (t1, r1) = pts[first - 1], pts[first]
    est = math.exp(math.log(t0) - math.log(r0) * (math.log(t1) - math.log(t0)) / (math.log(r1) - math.log(r0)))
    return {"measured": t1, "estimate": est, "kind": "interpolated", "ratio": ratio}


def crossovers(sweep: dict) -> dict:
    attn = {r["T"]: r.get("tokens_per_s") for r in sweep["rows"]["attention"]}
    out = {}
    for name, rows in sweep["rows"].items():
        if name != "attention":
            tps = {r["T"]: r.get("tokens_per_s") for r in rows}
            ts = [t for t in sweep["T"] if t in tps]
            out[name] = crossover(ts, [tps[t] for t in ts], [attn.get(t) for t in ts])
    return out


def cross_text(c: dict) -> str:
    if not c["measured"]:
        return c["kind"]
    if c.get("estimate"):
        return f"~{fmt_t(c['estimate'])} (faster from T={fmt_t(c['measured'])} on; {c['kind']})"
    return f"<= {fmt_t(c['measured'])} ({c['kind']})"


def sweep_cells(lengths, rows) -> list[str]:
    """One table cell per T: tokens/s, the skip status, or '-' when not run."""
    by_t = {r["T"]: r for r in rows}
    return ["-" if by_t.get(t) is None else f"{by_t[t]['tokens_per_s']:,.0f}" if by_t[t].get("tokens_per_s")
            else by_t[t]["status"] for t in lengths]


def fmt_t(t) -> str:
    if t is None:
        return "-"
    return f"{t / 1024:.1f}K" if t >= 1024 else f"{t:.0f}"


# ---------------------------------------------------------------------------------------------- plot
def plot(sweep: dict, path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no plot")
        return None
    fig, ax = plt.subplots(figsize=(10, 6.5))
    colors = plt.get_cmap("tab20").colors
    missing = []
    for i, (name, rows) in enumerate(sweep.items()):
        pts = [(r["T"], r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
        bad = [f"{r['status']} {fmt_t(r['T'])}" for r in rows if r["status"] not in ("ok", "skipped")]
        if bad:
            missing.append(f"{name}: {', '.join(bad)}")
        if not pts:
            continue
        ts, tps = zip(*pts)
        style = {"color": "black", "linewidth": 2.5, "linestyle": "--"} if name == "attention" else \
            {"color": colors[(2 * i) % 20 + (i // 10) % 2], "linestyle": ("-", "-.", ":")[i % 3]}
        ax.plot(ts, tps, marker="os^vD<>"[i % 7], markersize=4, label=name, **style)
    if missing:
        ax.text(0.01, 0.01, "not timed: " + "; ".join(missing), transform=ax.transAxes,
                fontsize=7, va="bottom", wrap=True)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (B = 1)")
    ax.set_ylabel("fwd+bwd tokens/s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------------------------- main runs
def limit_memory(gb: float | None) -> dict:
    """Cap the address space at (current size + ``gb``) so that a too-large allocation raises instead of the
    OOM killer acting; default ``gb`` = half the available memory."""
    size = mc.proc_status_bytes("VmSize")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                mem_avail = int(line.split()[1]) * 1024
                break
    except OSError:
        return {"limit_bytes": None}
    extra = int(gb * 2**30) if gb else mem_avail // 2
    limit = size + extra
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return {"limit_bytes": limit, "extra_bytes": extra, "mem_available_bytes": mem_avail}


def run_compare(args, payload, out) -> None:
    lengths = CMP_T_QUICK if args.quick else CMP_T
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"\n=== Part 1: ours vs titans-pytorch {titans_pytorch_version()}: B={CMP_B} dim={DIM} "
          f"heads={HEADS}x{HEAD_DIM} chunk={CHUNK} memory MLP depth {DEPTH} expansion {EXPANSION}; "
          f"T={list(lengths)}; repeats={repeats}")
    print(SEMANTICS)
    print(ARCH_DIFF)
    payload["compare"] = {"settings": settings_of_both(), "B": CMP_B, "T": list(lengths), "repeats": repeats,
                          "impls": {k: v[1] for k, v in IMPLS.items()}, "blocks": [], "rows": []}
    torch.manual_seed(0)
    modules = {name: build() for name, (build, _) in IMPLS.items()}
    rule = modules["ours"].rule
    skip = {}
    for t in lengths:
        before = load_now()
        check_load(f"before part-1 T={t}", before)
        res = time_block(modules, CMP_B, t, repeats, skip)
        after = load_now()
        check_load(f"after part-1 T={t}", after)
        peaks = {name: measure_peak(name, t, args.threads) if res[name].get("status") in ("ok", "non-finite")
                 else {"peak_bytes": None} for name in modules}
        flops = layer_fwd_flops(rule, CMP_B, t)
        for name, r in res.items():
            row = {"impl": name, "T": t, "tokens": CMP_B * t, **r, **peaks[name]}
            if name.startswith("ours") and r.get("status") == "ok":
                total, core = 3 * flops["total"], 3 * flops["core"]
                row.update(fwd_bwd_flops=total, core_fwd_bwd_flops=core, gflops=total / r["median_s"] / 1e9,
                           core_gflops=core / r["median_s"] / 1e9,
                           **{f"pct_of_{k}": 100 * total / r["median_s"] / 1e9 / p["gflops"]
                              for k, p in payload["matmul_peak"].items()})
            payload["compare"]["rows"].append(row)
        payload["compare"]["blocks"].append({"T": t, "load_before": before, "load_after": after})
        line = ", ".join(f"{n} {r['median_s']:.3f}s" if r.get("status") == "ok" else f"{n} {r.get('status')}"
                         for n, r in res.items())
        print(f"  T={t}: {line}  (load {before['loadavg'][0]:.2f} -> {after['loadavg'][0]:.2f})", flush=True)
        mc.write_json(out, payload)
    if not args.quick or args.count_flops:
        payload["compare"]["flop_counter_check"] = {
            "T": lengths[0], "analytic_fwd_bwd": 3 * layer_fwd_flops(rule, CMP_B, lengths[0])["total"],
            "FlopCounterMode_fwd_bwd": counted_flops(modules["ours"], CMP_B, lengths[0])}
    rows = {(r["impl"], r["T"]): r for r in payload["compare"]["rows"]}
    ratios = {}
    for t in lengths:
        for other in ("titans-pytorch", "titans-pytorch-b64"):
            for mine in ("ours", "ours-ln"):
                a, b = rows.get((mine, t), {}), rows.get((other, t), {})
                if a.get("tokens_per_s") and b.get("tokens_per_s"):
                    ratios[f"{mine}/{other}@T{t}"] = a["tokens_per_s"] / b["tokens_per_s"]
    payload["compare"]["ratios"] = ratios
    print_compare(payload)
    mc.write_json(out, payload)


def print_compare(payload) -> None:
    cmp = payload["compare"]
    print(f"\n{'impl':<20}{'T':>6}{'tokens/s':>11}{'median s':>10}{'peak MB':>9}{'GFLOP/s':>9}{'%mm1024':>9}"
          f"{'runs':>6}  status")
    for r in cmp["rows"]:
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else "-"
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        med = f"{r['median_s']:.3f}" if r.get("median_s") else "-"
        gf = f"{r['gflops']:.1f}" if r.get("gflops") else "-"
        pct = f"{r['pct_of_matmul_1024x1024x1024']:.0f}" if r.get("pct_of_matmul_1024x1024x1024") else "-"
        print(f"{r['impl']:<20}{r['T']:>6}{tps:>11}{med:>10}{peak:>9}{gf:>9}{pct:>9}{len(r.get('times_s', [])):>6}"
              f"  {r['status']}")
    print("ratios (tokens/s, ours / theirs; target: ours faster, > 1):")
    for k, v in cmp["ratios"].items():
        print(f"  {k:<44} {v:.2f}{'  <- headline' if k.startswith('ours/titans-pytorch@') else ''}")


def run_sweep(args, payload, out) -> None:
    lengths = [t for t in SWEEP_T if t <= (min(args.max_t, QUICK_MAX_T) if args.quick else args.max_t)]
    repeats = args.repeats or (2 if args.quick else 3)
    mixers = sweep_mixers()
    if args.mixers:
        mixers = {k: v for k, v in mixers.items() if k == "attention" or k in args.mixers}
    memlimit = limit_memory(args.mem_limit_gb)
    print(f"\n=== Part 2: mixers vs attention: B={SWEEP_B} dim={DIM} heads={HEADS}x{HEAD_DIM} chunk={CHUNK}; "
          f"T={lengths}; repeats={repeats} (1 for a mixer whose warm-up > {SLOW_S:.0f}s); skip larger T after "
          f"one fwd+bwd > {SKIP_S:.0f}s; address-space limit {memlimit.get('limit_bytes', 0) / 2**30:.1f} GiB")
    torch.manual_seed(0)
    modules = {name: build() for name, (build, _) in mixers.items()}
    payload["sweep"] = {"B": SWEEP_B, "T": lengths, "repeats": repeats, "memory_limit": memlimit,
                        "mixers": {k: v[1] for k, v in mixers.items()}, "blocks": [], "rows": {k: [] for k in mixers},
                        "skipped": []}
    skip, started = {}, time.perf_counter()
    for t in lengths:
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            for name in modules:
                payload["sweep"]["skipped"].append({"mixer": name, "T": t, "reason": "time budget (--budget-s)"})
            print(f"  T={t}: skipped, time budget {args.budget_s:.0f}s spent")
            continue
        before = load_now()
        check_load(f"before sweep T={t}", before)
        already = dict(skip)
        res = time_block(modules, SWEEP_B, t, repeats, skip)
        after = load_now()
        check_load(f"after sweep T={t}", after)
        for name, r in res.items():
            if r["status"] == "skipped":
                payload["sweep"]["skipped"].append({"mixer": name, "T": t, "reason": already[name]})
            payload["sweep"]["rows"][name].append({"T": t, **r})
        payload["sweep"]["blocks"].append({"T": t, "load_before": before, "load_after": after,
                                           "wall_s": after["time"] - before["time"]})
        line = ", ".join(f"{n} {r['tokens_per_s']:,.0f}" for n, r in res.items() if r.get("tokens_per_s"))
        print(f"  T={t} tokens/s: {line}  [{time.perf_counter() - started:.0f}s; load "
              f"{before['loadavg'][0]:.2f} -> {after['loadavg'][0]:.2f}]", flush=True)
        mc.write_json(out, payload)
    finish_sweep(payload, out)


def finish_sweep(payload: dict, out: Path) -> None:
    """Crossovers, table and plot from the stored sweep rows (also ``--refresh`` of a result file)."""
    payload["sweep"]["crossover"] = crossovers(payload["sweep"])
    print_sweep(payload)
    png = out.with_suffix(".png")
    title = (f"fwd+bwd tokens/s vs T, B=1, dim {DIM}, {HEADS} heads x {HEAD_DIM}, chunk {CHUNK}, "
             f"{payload['machine']['threads']} thread(s), {payload['machine']['cpu_model']}")
    payload["sweep"]["plot"] = plot(payload["sweep"]["rows"], png, title)
    if payload["sweep"]["plot"]:
        print(f"plot: {png}")
    mc.write_json(out, payload)


def print_sweep(payload) -> None:
    sw = payload["sweep"]
    header = f"{'mixer':<18}" + "".join(f"{fmt_t(t):>10}" for t in sw["T"]) + "   crossover vs attention"
    print("\nfwd+bwd tokens/s")
    print(header)
    print("-" * len(header))
    for name, rows in sw["rows"].items():
        cells = sweep_cells(sw["T"], rows)
        c = sw.get("crossover", {}).get(name)
        cross = "" if c is None else cross_text(c)
        print(f"{name:<18}" + "".join(f"{x:>10}" for x in cells) + "   " + cross)


def benchmark(args) -> None:
    flush = torch.set_flush_denormal(True)
    threads = args.threads
    torch.set_num_threads(threads)
    print(f"flush denormal: {'on' if flush else 'NOT SUPPORTED (off)'}; torch threads: {threads} "
          f"(physical cores: {mc.physical_cores()}); torch {torch.__version__}; {mc.cpu_model()}")
    out = Path(args.out) if args.out else RESULTS / ("layers_quick.json" if args.quick else "layers.json")
    start_load = load_now()
    print(f"machine load at start: loadavg {start_load['loadavg']}, {start_load}")
    check_load("at start", start_load)
    payload = {"benchmark": "layers", "quick": args.quick,
               "machine": {**mc.machine_info({"threads": threads, "flush_denormal": flush}),
                           "physical_cores": mc.physical_cores(), "load_start": start_load},
               "source": mc.source_info(), "measurement": {
                   "statistic": "median of the timed rounds", "warmup": "one per implementation and config, "
                   "with the finite check", "order": "implementations alternate run by run",
                   "slow_s": SLOW_S, "skip_s": SKIP_S, "load_warn": LOAD_WARN,
                   "loss": "out.square().mean(); input and all parameters receive gradients",
                   "contention": "share of a run's wall time during which some task waited for a CPU (PSI)",
                   "peak_memory": mc.PEAK_METHOD, "flops": layer_fwd_flops.__doc__.strip()}}
    before = load_now()
    payload["matmul_peak"] = mc.matmul_peak()
    payload["matmul_peak_load"] = {"before": before, "after": load_now()}
    for name, p in payload["matmul_peak"].items():
        print(f"fp32 peak {name}: {p['gflops']:.1f} GFLOP/s ({threads} thread(s))")
    started = time.perf_counter()
    if not args.skip_compare:
        run_compare(args, payload, out)
    if not args.skip_sweep:
        run_sweep(args, payload, out)
    payload["machine"]["load_end"] = load_now()
    payload["wall_s"] = time.perf_counter() - started
    loads = [b[k]["loadavg"][0] for part in ("compare", "sweep") for b in payload.get(part, {}).get("blocks", [])
             for k in ("load_before", "load_after")] + [start_load["loadavg"][0]]
    payload["max_loadavg_1m"] = max(loads)
    if payload["max_loadavg_1m"] > LOAD_WARN:
        print(f"\nWARNING: the 1-minute load average reached {payload['max_loadavg_1m']:.2f} (> {LOAD_WARN}) during "
              "the measurements: other processes were running; the numbers are indicative only.")
    mc.write_json(out, payload)
    print(f"\nwrote {out} ({payload['wall_s']:.0f}s)")


# ---------------------------------------------------------------------------------------------- markdown
def markdown(path: Path) -> None:
    """The tables of a result file as Markdown."""
    p = json.loads(path.read_text())
    if "compare" in p:
        cmp = p["compare"]
        print("| implementation | T | tokens/s | median s | peak MB | GFLOP/s (% of 1024³ matmul) | runs | status |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for r in cmp["rows"]:
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else "-"
            gf = (f"{r['gflops']:.1f} ({r['pct_of_matmul_1024x1024x1024']:.0f}%)" if r.get("gflops") else "-")
            print(f"| {r['impl']} | {r['T']} | {r['tokens_per_s']:,.0f} | {r['median_s']:.3f} | {peak} | {gf} | "
                  f"{len(r['times_s'])} | {r['status']} |" if r.get("tokens_per_s") else
                  f"| {r['impl']} | {r['T']} | - | - | {peak} | - | - | {r['status']} |")
        print("\n| ratio (tokens/s) | value |\n|---|---:|")
        for k, v in cmp["ratios"].items():
            print(f"| {k} | {v:.2f} |")
        for b in cmp["blocks"]:
            print(f"\nload average (1 min) part 1 T={b['T']}: {b['load_before']['loadavg'][0]:.2f} -> "
                  f"{b['load_after']['loadavg'][0]:.2f}")
    if "sweep" in p:
        sw = p["sweep"]
        print("\n| mixer | " + " | ".join(fmt_t(t) for t in sw["T"]) + " | crossover vs attention |")
        print("|---|" + "---:|" * len(sw["T"]) + "---|")
        for name, rows in sw["rows"].items():
            cells = sweep_cells(sw["T"], rows)
            c = crossovers(sw).get(name)
            cross = "(reference)" if c is None else cross_text(c)
            print(f"| {name} | " + " | ".join(cells) + f" | {cross} |")
        print("\n| T | load before | load after | block wall s |\n|---:|---:|---:|---:|")
        for b in sw["blocks"]:
            print(f"| {b['T']} | {b['load_before']['loadavg'][0]:.2f} | {b['load_after']['loadavg'][0]:.2f} | "
                  f"{b['wall_s']:.0f} |")
        for s in sw["skipped"]:
            print(f"- skipped {s['mixer']} T={s['T']}: {s['reason']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"part 1 at T={list(CMP_T_QUICK)}, sweep T <= {QUICK_MAX_T}, 2 repeats")
    parser.add_argument("--repeats", type=int, help="timed rounds per config (default: part 1 5, sweep 3; quick 2)")
    parser.add_argument("--max-t", type=int, default=max(SWEEP_T), help="longest T of the sweep")
    parser.add_argument("--threads", type=int, default=mc.physical_cores(),
                        help="torch threads (default: the physical cores)")
    parser.add_argument("--mixers", nargs="+", help="sweep only these mixers (attention always runs)")
    parser.add_argument("--skip-compare", action="store_true", help="skip part 1")
    parser.add_argument("--skip-sweep", action="store_true", help="skip part 2")
    parser.add_argument("--budget-s", type=float, help="stop starting new sweep lengths after this many seconds")
    parser.add_argument("--mem-limit-gb", type=float,
                        help="sweep address-space headroom (default half of MemAvailable)")
    parser.add_argument("--count-flops", action="store_true", help="FlopCounterMode cross-check in --quick too")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/layers.json, layers_quick.json)")
    parser.add_argument("--markdown", metavar="JSON", help="print the tables of a result file as Markdown and exit")
    parser.add_argument("--refresh", metavar="JSON", help="recompute crossovers, table and plot of a result file")
    parser.add_argument("--peak-child", nargs=3, metavar=("IMPL", "T", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        impl, t, threads = args.peak_child
        peak_child(impl, int(t), int(threads))
    elif args.refresh:
        path = Path(args.refresh)
        finish_sweep(json.loads(path.read_text()), path)
    elif args.markdown:
        markdown(Path(args.markdown))
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
