"""Memory-core benchmark: chunked vs recurrent ``memorize``, fwd+bwd throughput and peak memory on CPU.

What it measures. Two Titans rules (l2 objective, decay retention, momentum learner, chunk 64): the matrix
memory (``memory="linear"``) and a depth-2 residual GELU MLP memory with hidden width ``EXPANSION * D``. For each
rule at ``B, H, D = 4, 4, 64`` and ``T`` in 512..8192 it reports, for ``mode="chunked"`` and ``mode="recurrent"``
side by side: fwd+bwd tokens/s (tokens = ``B * T``), the peak extra memory of one fwd+bwd, the chunked/recurrent
speedup, and the chunked path's achieved GFLOP/s against a measured fp32 matmul peak. The recurrent path
materialises per-token weights, so it runs only for ``T <= --recurrent-max-t``.

How.
* fwd+bwd: ``q, k, v`` (L2-normalised along D), the gates ``lr = 0.1 sigmoid(n)``, ``decay = sigmoid(n - 4)``,
  ``momentum = 0.9 sigmoid(n + 2)`` and the initial state (weights and momentum) are leaves requiring grad;
  ``loss = out.square().mean()``; one timed run is ``memorize`` + ``backward``. The warm-up run of every config
  checks that the outputs, the final state and all gradients are finite, and aborts otherwise.
* Timing: flush-denormal on, ``torch.set_num_threads`` = physical cores; per (rule, T) one warm-up per path, then
  chunked and recurrent runs alternate for ``--repeats`` rounds (fewer when a warm-up exceeds ``SLOW_S``); the
  median is reported. Each run first waits until other processes leave the CPUs idle (/proc/stat) and is redone
  if one competed during it (Linux PSI: tasks waited for a CPU > ``CONTENDED`` of its time); the waiting has a
  total budget (``--max-wait``), after which contended runs are kept and counted. On a shared 2-core machine
  every op's two OpenMP threads wait for each other, so contention slows runs by 10-100x.
* Peak memory: every (rule, T, path) runs once more in a fresh subprocess. After imports, input creation and a
  one-chunk warm-up (lazy library initialisation), freed heap memory is returned to the OS (``malloc_trim``) and
  the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``); peak = ``VmHWM`` after the
  fwd+bwd minus ``VmRSS`` before it: the extra resident bytes the fwd+bwd needed.
* FLOPs: the matmul work of the chunked algorithm, counted in :func:`chunked_fwd_flops`; backward ~ 2x forward.

``--baseline REV`` also times ``nestedmemory.memory`` as it was at git revision ``REV`` (path ``baseline``): that
subpackage imports nothing outside itself, so ``git archive`` puts a frozen copy under its own package name beside
today's code and both run in this process, alternating, on the same inputs; each config first checks that the
two outputs agree to fp32 rounding and records their largest difference.

``--profile RULE`` instead profiles one chunked fwd+bwd with ``torch.profiler`` and prints the top ops.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import dataclasses
import hashlib
import importlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nestedmemory.memory import MemoryRule, memorize

B, H, D, CHUNK, EXPANSION = 4, 4, 64, 64, 4
T_FULL = (512, 1024, 2048, 4096, 8192)
T_QUICK = (512, 1024)
PATHS = ("chunked", "recurrent")
BASELINE_PATH = "baseline"
AGREE_RTOL = 1e-4  # the largest relative difference of the outputs the baseline may show (fp32 rounding)
BASELINE = None   # the frozen ``memory`` package of ``--baseline REV`` (load_baseline)
_BASELINE_DIR = None   # its temporary directory, kept for the process's life
SLOW_S, SLOW_REPEATS = 10.0, 3          # a config whose warm-up takes longer than SLOW_S runs at most 3 rounds
PRESSURE = Path("/proc/pressure/cpu")
CONTENDED, BUSY_MAX, IDLE_PROBE_S, WAIT_CAP_S, RETRIES = 0.05, 0.2, 1.0, 60.0, 3
SPEEDUP_TARGET, SPEEDUP_T = 20.0, 1024
BASELINE_TARGET = 2.0   # issue 13, target 1: today's fwd+bwd tokens/s over the baseline's at T = SPEEDUP_T
MEMORY_TARGET, MEMORY_T = 9.0, (1024, 8192)
MATMUL_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::mv", "aten::dot"}
RESULTS = Path(__file__).resolve().parent / "results"

RULES = {
    "linear": MemoryRule(memory="linear", objective="l2", retention="decay", learner="momentum",
                         chunk_size=CHUNK),
    "mlp": MemoryRule(memory="mlp", depth=2, expansion=EXPANSION, activation="gelu", residual=True,
                      objective="l2", retention="decay", learner="momentum", chunk_size=CHUNK),
}


# ---------------------------------------------------------------------------------------------- machine
def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, else the logical CPU count."""
    cores, package = set(), "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "physical id":
                package = value
            elif key == "core id":
                cores.add((package, value))
    except OSError:
        pass
    return len(cores) or os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def setup_torch(threads: int | None = None) -> dict:
    """Flush denormals and pin the thread count (default: the physical cores)."""
    flush = torch.set_flush_denormal(True)
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    return {"threads": threads, "flush_denormal": flush}


def cpu_load() -> dict:
    """Load average and CPU pressure (share of time runnable tasks waited for a CPU): other processes on the
    machine distort timings, badly so for the recurrent path's many small multi-threaded ops."""
    load = {"loadavg_1m": os.getloadavg()[0]}
    try:
        some = PRESSURE.read_text().splitlines()[0].split()
        load["cpu_pressure_avg60_pct"] = float(dict(f.split("=") for f in some[1:])["avg60"])
    except (OSError, IndexError, KeyError, ValueError):
        pass
    return load


def source_info() -> dict:
    """Which ``nestedmemory`` was measured: its location, a digest of its sources and the repository HEAD."""
    import nestedmemory

    root = Path(nestedmemory.__file__).resolve().parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.py")))).hexdigest()[:16]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                          capture_output=True, text=True).stdout.strip()
    return {"package_dir": str(root), "sources_sha256_16": digest, "repo_head": head or None}


def machine_info(setup: dict) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu_model": cpu_model(),
            "logical_cpus": os.cpu_count(), **setup}


def provenance(data: dict) -> str:
    """``"N thread(s), CPU, torch V, load L, code HEAD"`` of a result with ``machine``, ``load`` and ``source``."""
    m = data["machine"]
    return (f"{m['threads']} thread{'s' * (m['threads'] != 1)}, {m['cpu_model']}, torch {m['torch']}, load "
            f"{data['load'].get('loadavg_1m', float('nan')):.2f}, code {data['source']['repo_head']}")


def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


LIBC = _libc()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    if LIBC is not None and hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)


def proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- workload
@dataclass
class Case:
    """The inputs of one (rule, T) config; ``leaves`` are every tensor that receives a gradient."""

    inputs: dict
    state: object
    leaves: list


def make_case(rule: MemoryRule, t: int, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    inputs = {name: F.normalize(randn(B, t, H, D), dim=-1) for name in ("q", "k", "v")}
    inputs.update(lr=0.1 * torch.sigmoid(randn(B, t, H)), decay=torch.sigmoid(randn(B, t, H) - 4),
                  momentum=0.9 * torch.sigmoid(randn(B, t, H) + 2))
    state = rule.init_state(B, H, D, generator=g)
    leaves = list(inputs.values()) + state.weights + state.momentum
    for x in leaves:
        x.requires_grad_()
    return Case(inputs, state, leaves)


def load_baseline(rev: str):
    """``nestedmemory.memory`` at git revision ``rev``, imported as ``baseline_nestedmemory.memory``."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(repo), "archive", rev, "nestedmemory/memory"], capture_output=True)
    if done.returncode != 0:
        sys.exit(f"error: --baseline {rev}: git archive failed: {done.stderr.decode().strip()}")
    global _BASELINE_DIR
    _BASELINE_DIR = tempfile.TemporaryDirectory(prefix="memory_core_baseline_")   # removed at exit
    root = Path(_BASELINE_DIR.name)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(root, filter="data")
    package = root / "baseline_nestedmemory"
    (root / "nestedmemory").rename(package)
    (package / "__init__.py").write_text(f'"""nestedmemory/memory at {rev}."""\n')
    sys.path.insert(0, str(root))
    return importlib.import_module("baseline_nestedmemory.memory")


def _as(cls, obj):
    """``obj`` (a dataclass of today's code) as the baseline's class ``cls``, field by field."""
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if f.init})


def call(rule: MemoryRule, case: Case, mode: str):
    """``memorize`` on the case's inputs: today's code, or the frozen baseline's chunked path."""
    x, impl, state = case.inputs, memorize, case.state
    if mode == BASELINE_PATH:
        impl, rule, state, mode = BASELINE.memorize, _as(BASELINE.MemoryRule, rule), \
            _as(BASELINE.MemoryState, state), "chunked"
    return impl(x["q"], x["k"], x["v"], rule, lr=x["lr"], decay=x["decay"], momentum=x["momentum"],
                initial_state=state, output_final_state=True, mode=mode)


def baseline_difference(rule: MemoryRule, case: Case) -> float:
    """Largest ``|today − baseline| / max|baseline|`` over the outputs and final weights (no gradients)."""
    with torch.no_grad():
        (out, final), (base, base_final) = call(rule, case, "chunked"), call(rule, case, BASELINE_PATH)
    pairs = [(out, base)] + list(zip(final.weights, base_final.weights))
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in pairs)


def run_once(rule: MemoryRule, case: Case, mode: str, check: bool = False) -> float:
    """One fwd+bwd; returns its wall time in seconds. ``check`` aborts on non-finite outputs or gradients."""
    for x in case.leaves:
        x.grad = None
    start = time.perf_counter()
    out, final = call(rule, case, mode)
    out.square().mean().backward()
    seconds = time.perf_counter() - start
    if check:
        checked = {"output": out, **{f"final weight {i}": w for i, w in enumerate(final.weights)},
                   **{f"grad of leaf {i}": leaf.grad for i, leaf in enumerate(case.leaves)}}
        bad = [name for name, tensor in checked.items() if not bool(torch.isfinite(tensor).all())]
        if bad:
            sys.exit(f"ABORT: {mode} path produced non-finite values ({', '.join(bad)}); the memory diverged, "
                     "so timings would be meaningless. Check the input scales and gates.")
    return seconds


def cpu_stall_us() -> int | None:
    """Cumulative microseconds during which some runnable task waited for a CPU (Linux PSI), None without PSI."""
    try:
        return int(PRESSURE.read_text().split()[4].partition("=")[2])
    except (OSError, IndexError, ValueError):
        return None


def cpu_busy_s() -> float:
    """Non-idle CPU seconds summed over all CPUs since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class IdleGate:
    """Waits until other processes use less than ``BUSY_MAX`` CPUs over an ``IDLE_PROBE_S`` probe (this process
    sleeps meanwhile, so all the load is theirs): at most ``WAIT_CAP_S`` per wait and ``budget_s`` in total."""

    def __init__(self, budget_s: float):
        self.left = budget_s

    def wait(self) -> float:
        """Seconds waited (0 on an idle machine or once the budget is spent)."""
        waited = 0.0
        while self.left > 0 and waited < WAIT_CAP_S:
            before = cpu_busy_s()
            time.sleep(IDLE_PROBE_S)
            if (cpu_busy_s() - before) / IDLE_PROBE_S < BUSY_MAX:
                break
            waited += IDLE_PROBE_S
            self.left -= IDLE_PROBE_S
        return waited


def timed_run(rule: MemoryRule, case: Case, mode: str, gate: IdleGate, check: bool = False) -> dict:
    """``run_once`` on an idle machine. A run during which tasks waited for a CPU more than ``CONTENDED`` of its
    time (other processes competing) is redone, at most ``RETRIES`` times while the gate's budget lasts."""
    for attempt in range(1, RETRIES + 2):
        waited = gate.wait()
        before = cpu_stall_us()
        seconds = run_once(rule, case, mode, check)
        contention = None if before is None else (cpu_stall_us() - before) / 1e6 / seconds
        gc.collect()
        if contention is None or contention <= CONTENDED or gate.left <= 0:
            break
    return {"s": seconds, "contention": contention, "attempts": attempt, "waited_s": waited}


def time_config(rule: MemoryRule, t: int, paths, repeats: int, gate: IdleGate) -> dict:
    """Warm-up per path, then ``repeats`` interleaved rounds; {path: {"warmup_s", "times_s", "runs"}}."""
    case = make_case(rule, t)
    difference = baseline_difference(rule, case) if BASELINE_PATH in paths else None
    if difference is not None and difference > AGREE_RTOL:
        sys.exit(f"ABORT: today's outputs differ from the baseline's by {difference:.2e} (relative) at T={t}: "
                 "a speed comparison of different results is meaningless")
    warm = {path: timed_run(rule, case, path, gate, check=True)["s"] for path in paths}
    rounds = min(repeats, SLOW_REPEATS) if max(warm.values()) > SLOW_S else repeats
    runs = {path: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            runs[path].append(timed_run(rule, case, path, gate))
    del case
    release_memory()
    return {path: {"warmup_s": warm[path], "times_s": [r["s"] for r in runs[path]], "runs": runs[path],
                   **({"difference_vs_baseline": difference} if path == BASELINE_PATH else {})}
            for path in paths}


# ---------------------------------------------------------------------------------------------- peak memory
def peak_child(rule_name: str, t: int, path: str) -> None:
    """Subprocess body: print the extra resident bytes of one cold fwd+bwd as JSON."""
    setup_torch()
    rule = RULES[rule_name]
    run_once(rule, make_case(rule, CHUNK, seed=1), path)   # lazy library initialisation, then freed
    case = make_case(rule, t)
    release_memory()
    reset = reset_rss_peak()
    baseline = proc_status_bytes("VmRSS" if reset else "VmHWM")
    run_once(rule, case, path)
    peak = proc_status_bytes("VmHWM") - baseline
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": baseline, "hwm_reset": reset}))


def measure_peak(rule_name: str, t: int, path: str, baseline: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-child", rule_name, str(t), path]
    cmd += ["--baseline", baseline] if path == BASELINE_PATH else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"ABORT: peak-memory subprocess for {rule_name} T={t} {path} failed "
                 f"(exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- FLOPs
def chunked_fwd_flops(rule: MemoryRule, t: int) -> int:
    """Matmul FLOPs of the chunked momentum path's forward (elementwise work not counted; 1 MAC = 2 FLOPs).

    Per chunk of C tokens and per (batch, head), for every memory weight W (in x out): the gradient-point forward
    over the write keys (C in out), the backward through the memory for the deltas (C in out, all layers but
    the first), the dual-form read R W0 and momentum term R S0 (2 C in out), R Xᵀ (C² in) and (A∘G) Δ (C² out),
    and the chunk-end weights and momentum Xᵀ (g Δ) (2 C in out); plus the coefficient matrices once per chunk:
    decay @ carry (C³) and decay @ m (C²)."""
    c = rule.chunk_size
    macs = c ** 3 + c ** 2
    for layer, (d_in, d_out) in enumerate(rule.weight_shapes(D)):
        macs += c * d_in * d_out * (1 + (layer > 0) + 2 + 2) + c * c * (d_in + d_out)
    return 2 * macs * B * H * math.ceil(t / c)


def matmul_peak(gate: IdleGate | None = None, rounds: int = 15) -> dict:
    """fp32 GFLOP/s of a 1024³ matmul and of the realistic batched [16, 64, 64] @ [16, 64, 64]: the best of
    ``rounds`` timings (other processes can only slow a round down), with the median alongside."""
    shapes = {"matmul_1024x1024x1024": ((1024, 1024), 1),
              "bmm_16x64x64": ((B * H, CHUNK, D), 200)}
    peaks = {}
    for name, (shape, calls) in shapes.items():
        a, b = torch.randn(shape), torch.randn(shape)
        out = torch.empty(shape)
        flops = 2 * math.prod(shape) * shape[-1] * calls
        for _ in range(3):
            torch.matmul(a, b, out=out)
        if gate is not None:
            gate.wait()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                torch.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
        peaks[name] = {"gflops": flops / min(times) / 1e9, "median_gflops": flops / statistics.median(times) / 1e9,
                       "times_s": times, "calls": calls}
    return peaks


def best_peak(*measurements: dict) -> dict:
    """Per shape, the measurement with the highest GFLOP/s (the peak is taken before and after the runs)."""
    return {name: max((m[name] for m in measurements), key=lambda p: p["gflops"]) for name in measurements[0]}


# ---------------------------------------------------------------------------------------------- report
def summarise(timings: dict, peaks: dict, matmul: dict) -> list[dict]:
    """One row per (rule, T, path) with medians, throughput, memory, FLOP rate and speedup."""
    rows = []
    for (rule_name, t), per_path in timings.items():
        median = {path: statistics.median(r["times_s"]) for path, r in per_path.items()}
        for path, r in per_path.items():
            row = {"rule": rule_name, "T": t, "path": path, "tokens": B * t, **r, "median_s": median[path],
                   "contended_runs": sum((x["contention"] or 0) > CONTENDED for x in r["runs"]),
                   "tokens_per_s": B * t / median[path], **peaks[rule_name, t, path]}
            if path in ("chunked", BASELINE_PATH):
                fwd = chunked_fwd_flops(RULES[rule_name], t)
                gflops = 3 * fwd / median[path] / 1e9
                row.update(fwd_flops=fwd, fwd_bwd_flops=3 * fwd, gflops=gflops,
                           **{f"pct_of_{name}": 100 * gflops / p["gflops"] for name, p in matmul.items()})
                if "recurrent" in median and path == "chunked":
                    row["speedup_vs_recurrent"] = median["recurrent"] / median[path]
                if BASELINE_PATH in median and path == "chunked":  # paired: the rounds alternate, so a ratio
                    # within a round cancels the machine's slow drifts that medians of each path keep
                    pairs = zip(per_path[BASELINE_PATH]["times_s"], r["times_s"])
                    row["speedup_vs_baseline"] = statistics.median(base / ours for base, ours in pairs)
            rows.append(row)
    return rows


def targets(rows: list[dict]) -> dict:
    """Pass/fail of the issue's acceptance targets; ``pass`` is None where the run did not measure it."""
    chunked = {(r["rule"], r["T"]): r for r in rows if r["path"] == "chunked"}
    out = {}
    for rule_name in RULES:
        speedup = chunked.get((rule_name, SPEEDUP_T), {}).get("speedup_vs_recurrent")
        out[f"speedup_{rule_name}_T{SPEEDUP_T}"] = {
            "value": speedup, "target": f">= {SPEEDUP_TARGET}",
            "pass": None if speedup is None else speedup >= SPEEDUP_TARGET}
        small, big = (chunked.get((rule_name, t)) for t in MEMORY_T)
        ratio = big["peak_bytes"] / small["peak_bytes"] if small and big else None
        out[f"peak_memory_ratio_{rule_name}_T{MEMORY_T[1]}_over_T{MEMORY_T[0]}"] = {
            "value": ratio, "target": f"<= {MEMORY_TARGET}",
            "pass": None if ratio is None else ratio <= MEMORY_TARGET}
        gain = chunked.get((rule_name, SPEEDUP_T), {}).get("speedup_vs_baseline")
        if gain is not None:
            out[f"speedup_vs_baseline_{rule_name}_T{SPEEDUP_T}"] = {
                "value": gain, "target": f">= {BASELINE_TARGET}", "pass": gain >= BASELINE_TARGET}
    return out


def print_table(rows: list[dict], matmul: dict) -> None:
    names = list(matmul)
    header = (f"{'rule':<7}{'T':>6}  {'path':<10}{'tokens/s':>11}{'peak MB':>10}{'speedup':>9}{'vs base':>9}"
              f"{'GFLOP/s':>9}"
              f"{'%1024mm':>9}{'%bmm64':>8}{'repeats':>8}{'contended':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        fmt = lambda key, spec: format(r[key], spec) if key in r else "-"  # noqa: E731
        print(f"{r['rule']:<7}{r['T']:>6}  {r['path']:<10}{r['tokens_per_s']:>11,.0f}"
              f"{r['peak_bytes'] / 2**20:>10.1f}{fmt('speedup_vs_recurrent', '.1f'):>9}"
              f"{fmt('speedup_vs_baseline', '.2f'):>9}{fmt('gflops', '.2f'):>9}"
              f"{fmt('pct_of_' + names[0], '.1f'):>9}{fmt('pct_of_' + names[1], '.1f'):>8}"
              f"{len(r['times_s']):>8}{r['contended_runs']:>10}")


def print_targets(result: dict) -> None:
    for name, t in result.items():
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[t["pass"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"  {name:<40} {value:>8} (target {t['target']}): {verdict}")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


PEAK_METHOD = ("fresh subprocess per (rule, T, path); after imports, inputs and a one-chunk warm-up, "
               "malloc_trim(0) and /proc/self/clear_refs=5 (reset VmHWM); peak = VmHWM after one cold fwd+bwd "
               "minus VmRSS before it (extra resident bytes the fwd+bwd needed). If the reset is refused "
               "(hwm_reset false) the baseline is the prior VmHWM and the number is a lower bound.")
FLOP_METHOD = ("matmul FLOPs of the chunked algorithm counted per chunk (see chunked_fwd_flops); "
               "fwd+bwd = 3 x fwd; elementwise ops not counted; GFLOP/s = fwd+bwd FLOPs / median time")


def benchmark(args) -> None:
    setup = setup_torch(args.threads)
    print(f"flush denormal: {'on' if setup['flush_denormal'] else 'NOT SUPPORTED (off)'}; "
          f"torch threads: {setup['threads']}; torch {torch.__version__}; {cpu_model()}")
    lengths = args.lengths or (T_QUICK if args.quick else T_FULL)
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"B={B} H={H} D={D} chunk={CHUNK}, MLP expansion {EXPANSION}; T={list(lengths)}; repeats={repeats} "
          f"(at most {SLOW_REPEATS} when a warm-up exceeds {SLOW_S:.0f}s); median reported")
    print(f"recurrent path runs only for T <= {args.recurrent_max_t} (it materialises per-token weights); "
          "the chunked path runs every T")
    load_start = cpu_load()
    print(f"nestedmemory: {source_info()['package_dir']}; machine load at start: {load_start}")
    max_wait = args.max_wait if args.max_wait is not None else (30.0 if args.quick else 900.0)
    print(f"each run waits for CPUs free of other processes (their use < {BUSY_MAX} CPU) and is redone if "
          f"contended (PSI stall > {CONTENDED:.0%} of the run), up to {max_wait:.0f}s of waiting in total")
    gate = IdleGate(max_wait)
    matmul_before = matmul_peak(gate)

    started = time.perf_counter()
    timings, peaks, skipped = {}, {}, []
    for rule_name, rule in RULES.items():
        for t in lengths:
            paths = [p for p in PATHS if p == "chunked" or t <= args.recurrent_max_t]
            paths += [BASELINE_PATH] if args.baseline else []
            skipped += [{"rule": rule_name, "T": t, "path": p, "reason": "T > --recurrent-max-t"}
                        for p in PATHS if p not in paths]
            timings[rule_name, t] = time_config(rule, t, paths, repeats, gate)
            for path in paths:
                peaks[rule_name, t, path] = measure_peak(rule_name, t, path, args.baseline)
            done = ", ".join(f"{p} {statistics.median(r['times_s']):.3f}s (redone "
                             f"{sum(x['attempts'] - 1 for x in r['runs'])}, waited "
                             f"{sum(x['waited_s'] for x in r['runs']):.0f}s)"
                             for p, r in timings[rule_name, t].items())
            print(f"  {rule_name} T={t}: {done}  [{time.perf_counter() - started:.0f}s elapsed, "
                  f"wait budget left {gate.left:.0f}s]", flush=True)

    matmul = best_peak(matmul_before, matmul_peak(gate))
    for name, p in matmul.items():
        print(f"fp32 peak {name}: {p['gflops']:.1f} GFLOP/s (best round, best of before/after the runs)")
    rows = summarise(timings, peaks, matmul)
    result = targets(rows)
    load_end = cpu_load()
    print(f"\nmachine load at end: {load_end}")
    print_table(rows, matmul)
    print("\nspeedup = recurrent median / chunked median; vs base = median over the alternating rounds of the "
          "baseline's time / today's; peak MB = extra resident memory of one fwd+bwd "
          "(fresh subprocess, RSS high-water mark); GFLOP/s = counted chunked matmul FLOPs (fwd+bwd = 3x fwd); "
          "contended = kept runs during which other processes competed for the CPUs")
    print("targets:")
    print_targets(result)

    default = "memory_core_quick.json" if args.quick else "memory_core.json"
    out = Path(args.out) if args.out else RESULTS / default
    write_json(out, {
        "benchmark": "memory_core",
        "settings": {"B": B, "H": H, "D": D, "chunk_size": CHUNK, "mlp_expansion": EXPANSION, "T": list(lengths),
                     "repeats": repeats, "slow_warmup_s": SLOW_S, "slow_repeats": SLOW_REPEATS,
                     "recurrent_max_t": args.recurrent_max_t, "quick": args.quick, "max_wait_s": max_wait,
                     "contended_stall_share": CONTENDED, "idle_busy_max_cpus": BUSY_MAX,
                     "wait_cap_s": WAIT_CAP_S, "retries": RETRIES,
                     "rules": {name: repr(rule) for name, rule in RULES.items()},
                     "loss": "out.square().mean()", "statistic": "median",
                     "order": "per (rule, T): one warm-up per path, then the paths interleaved",
                     "baseline_rev": args.baseline, "baseline_agree_rtol": AGREE_RTOL},
        "machine": {**machine_info(setup), "load_start": load_start, "load_end": load_end},
        "source": source_info(),
        "matmul_peak": matmul,
        "peak_memory_method": PEAK_METHOD,
        "flop_method": FLOP_METHOD,
        "results": rows,
        "skipped": skipped,
        "targets": result,
        "wall_s": time.perf_counter() - started,
    })
    print(f"\nwrote {out} ({time.perf_counter() - started:.0f}s)")


# ---------------------------------------------------------------------------------------------- profile
def profile(rule_name: str, t: int, max_wait: float, rows: int = 15) -> None:
    """Profile one chunked fwd+bwd (after a warm-up) and split its time into matmuls, other ops, overhead."""
    setup_torch()
    rule = RULES[rule_name]
    case = make_case(rule, t)
    run_once(rule, case, "chunked", check=True)
    gate = IdleGate(max_wait)
    wall = statistics.median(timed_run(rule, case, "chunked", gate)["s"] for _ in range(5))
    gate.wait()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = run_once(rule, case, "chunked")
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    ops = [e for e in events if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS) / 1e6
    outside = max(profiled - total, 0.0)
    print(f"{rule_name} chunked fwd+bwd T={t}: unprofiled median {wall * 1e3:.1f} ms, profiled run "
          f"{profiled * 1e3:.1f} ms with {sum(e.count for e in ops)} aten op calls; shares of the profiled run:")
    print(f"  matmuls {matmul * 1e3:.1f} ms ({100 * matmul / profiled:.0f}%), other aten ops "
          f"{(total - matmul) * 1e3:.1f} ms ({100 * (total - matmul) / profiled:.0f}%), outside aten ops (Python, "
          f"dispatch, autograd engine, profiler) {outside * 1e3:.1f} ms ({100 * outside / profiled:.0f}%)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"T in {T_QUICK} only, 2 repeats")
    parser.add_argument("--repeats", type=int, help="timed rounds per config (default 5, --quick 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the physical cores)")
    parser.add_argument("--lengths", type=int, nargs="+", metavar="T", help=f"sequence lengths (default {T_FULL}, "
                        f"--quick {T_QUICK})")
    parser.add_argument("--recurrent-max-t", type=int, default=1024, help="longest T for the recurrent path")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/memory_core.json, "
                                      "memory_core_quick.json with --quick)")
    parser.add_argument("--max-wait", type=float, help="total seconds the run may wait for CPUs free of other "
                                                         "processes (default 900, --quick 30)")
    parser.add_argument("--baseline", metavar="REV", help="also time nestedmemory/memory as it was at this git "
                        "revision (path 'baseline'), alternating with today's code in this process")
    parser.add_argument("--profile", choices=sorted(RULES),
                        help="profile one chunked fwd+bwd of this rule and exit")
    parser.add_argument("--profile-t", type=int, default=1024, help="T of --profile")
    parser.add_argument("--peak-child", nargs=3, metavar=("RULE", "T", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        global BASELINE
        BASELINE = load_baseline(args.baseline)
    if args.peak_child:
        rule_name, t, path = args.peak_child
        peak_child(rule_name, int(t), path)
    elif args.profile:
        profile(args.profile, args.profile_t, 300.0 if args.max_wait is None else args.max_wait)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
