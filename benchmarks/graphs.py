"""GSM++ on its synthetic graph tasks (issue 16; Behrouz et al., ICML 2025, "Best of Both Worlds: Advantages of
Hybrid Graph Sequence Models", arXiv 2411.15671, Tables 1–2; NEXT-WAVE.md §4.3): which tokenisation and which global
encoder solve which task, at CPU scale. Every graph and label is synthetic (networkx, :mod:`nestedmemory.graphs.tasks`).

Protocol (:data:`SETTINGS`; ``--quick`` shrinks it to a smoke test). Per task, 256 training and 256 test graphs of
8–24 nodes, generated once from data seed 0 (:func:`nestedmemory.graphs.tasks.make_task`, the HAC fields computed
once per graph). Every model: width 32, 2 layers, PyG's (graph-mode) layer norm, 4 attention heads; AdamW (lr 3e-3,
weight decay 0.01, cosine to 0, gradient norm clipped at 1) for 200 steps of 32 random training graphs; the final
weights scored on the test set; cross-entropy / MSE of standardised targets. Mean ± sample std over the training
seeds (initialisation and batch order; the data stay fixed). One thread.

Sections (``--section``, default all):

- ``local`` (Table 1): node degree, cycle check, triangle count; tokenisations node (degree order, as Graph-Mamba;
  random order), HAC-DFS, k-hop (k = 2), HAC-BFS; encoders attention (Transformer) and mamba2 (SSD); hierarchical PE
  on; GSM layers without their local MPNN (``conv=None``): the tokenisation is the only way the structure reaches
  the model, as in the paper's tokenisation rows (node tokens score at chance on node degree there).
- ``global`` (Table 2): connectivity, colour counting, shortest path; node (degree order) with and without PE,
  HAC-DFS, k-hop, HAC-BFS; encoders attention, mamba2, hybrid (GSM++'s 2 × mamba2 + attention); no local MPNN.
- ``counting``: colour counting without PE, node tokens: attention against recurrent encoders (mamba2, titans-lmm,
  hybrid), the paper's Theorem 1 (a Transformer without PE cannot count; a recurrent model can).
- ``baselines``: every task, GSM++ (hybrid, HAC-DFS, PE, GatedGCN local branch) against PyG's GPS (``GPSConv``,
  GatedGCN + attention) and a plain GatedGCN stack, the baselines' width set so that their parameter counts match
  GSM++'s (closest multiple of 4); all three get the same hierarchical PE.
- ``pooling``: the local tasks again with k-hop and HAC-BFS tokens that *sum* their nodes (``pool="sum"``) instead
  of averaging them (GSM++'s reading): a summed token also carries its size.
- ``longrange``: connectivity where it is a global task: forests of 2–3 random trees on 32–64 nodes
  (``family="forest"``; a connected pair is on average 4.6 hops apart, half of them more than 4: beyond what a
  2-layer message-passing model relates) — the ``global``
  grid of tokenisations × encoders, plus GSM++ (HAC-DFS and its mixture of tokenisations, MoT), GPS and GatedGCN
  at GSM++'s parameter count; 400 steps.

Scores: accuracy (node degree, cycle, connectivity; colour counting: share of (graph, colour) counts exactly right
after rounding), RMSE (triangles, shortest path); each table also gives a constant predictor (the training
majority class / mean). ``orderings`` checks the paper's claims on the means ("beyond spread": by more than the sum
of the two standard deviations).

Writes ``docs/graphs.md`` and ``.json`` (each section replaces its part; text after :data:`NOTES_MARK` is kept);
prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc  # noqa: E402

from nestedmemory.graphs.models import build_model, count_parameters  # noqa: E402
from nestedmemory.graphs.tasks import make_task  # noqa: E402
from nestedmemory.tasks.report import write_keeping_notes  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "graphs.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/graphs.py keeps everything after this line. -->"
SETTINGS = dict(hidden=32, layers=2, heads=4, norm="layer_norm", train=256, test=256, num_nodes=(8, 24),
                num_colors=3, data_seed=0, steps=200, batch_size=32, lr=3e-3, weight_decay=0.01, clip=1.0,
                seeds=[0, 1], eval_batch=64)
QUICK = dict(SETTINGS, hidden=8, train=12, test=8, num_nodes=(6, 10), steps=2, batch_size=4, seeds=[0])
LOCAL = dict(tasks=["degree", "cycle", "triangles"], tokenizations=["degree", "random", "hac_dfs", "khop", "hac_bfs"],
             mixers=["attention", "mamba2"])
QUICK_LOCAL = dict(tasks=["degree"], tokenizations=["degree", "khop"], mixers=["attention"])
GLOBAL = dict(tasks=["connectivity", "colors", "shortest_path"],
              rows=[["degree", True], ["degree", False], ["hac_dfs", True], ["khop", True], ["hac_bfs", True]],
              mixers=["attention", "mamba2", "hybrid"])
QUICK_GLOBAL = dict(tasks=["colors"], rows=[["degree", False], ["hac_dfs", True]], mixers=["attention"])
COUNTING = dict(task="colors", tokenization="degree", mixers=["attention", "mamba2", "titans-lmm", "hybrid"])
QUICK_COUNTING = dict(COUNTING, mixers=["attention", "mamba2"])
BASELINES = dict(tasks=["degree", "cycle", "triangles", "connectivity", "colors", "shortest_path"],
                 models=["gsm++", "gps", "gatedgcn"])
QUICK_BASELINES = dict(BASELINES, tasks=["cycle"])
POOLING = dict(LOCAL, tokenizations=["khop", "hac_bfs"], pool="sum")
QUICK_POOLING = dict(QUICK_LOCAL, tokenizations=["khop"], pool="sum")
#: the long-range connectivity set: its own graph family and sizes, and twice the steps (at 200, runs either learn
#: the task or stay at the majority class: seeds ± 12–24 points); the rest of :data:`SETTINGS`.
LONGRANGE_SETTINGS = dict(SETTINGS, family="forest", num_nodes=(32, 64), steps=400)
QUICK_LONGRANGE_SETTINGS = dict(QUICK, family="forest", num_nodes=(12, 16))
LONGRANGE = dict(tasks=["connectivity"], rows=GLOBAL["rows"], mixers=GLOBAL["mixers"],
                 models=[dict(model="gsm++"), dict(model="gsm++", tokenization="mixture"), dict(model="gps"),
                         dict(model="gatedgcn")])
QUICK_LONGRANGE = dict(LONGRANGE, rows=[["hac_dfs", True], ["khop", True]], mixers=["mamba2"],
                       models=[dict(model="gsm++", tokenization="mixture"), dict(model="gps")])
TOKEN_NAMES = {"degree": "node (degree order)", "random": "node (random order)", "hac_dfs": "HAC-DFS",
               "khop": "k-hop", "hac_bfs": "HAC-BFS"}
LABELS = {"degree": "node degree", "cycle": "cycle check", "triangles": "triangles", "connectivity": "connectivity",
          "colors": "colour counting", "shortest_path": "shortest path"}


# ---------------------------------------------------------------------------------------------- one run
@lru_cache(maxsize=None)
def dataset(name: str, train: int, test: int, num_nodes: tuple, num_colors: int, seed: int, family: str | None):
    """Task ``name``, its training and test graphs (built once per process)."""
    task, splits = make_task(name, dict(train=train, val=0, test=test), num_nodes=num_nodes, num_colors=num_colors,
                             family=family, seed=seed)
    return task, splits["train"], splits["test"]


def data_of(name: str, settings: dict):
    return dataset(name, settings["train"], settings["test"], tuple(settings["num_nodes"]), settings["num_colors"],
                   settings["data_seed"], settings.get("family"))


def model_for(name: str, spec: dict, settings: dict, hidden: int | None = None):
    """The model of ``spec`` (``model``, ``tokenization``, ``mixer``, ``pe``, ``conv``, ``pool``) for task
    ``name``."""
    task, train, _ = data_of(name, settings)
    return build_model(spec.get("model", "gsm++"), train[0].x.shape[1], hidden or settings["hidden"], task.outputs,
                       settings["layers"], task.level, tokenization=spec.get("tokenization", "hac_dfs"),
                       mixer=spec.get("mixer", "hybrid"), pe=spec.get("pe", True), conv=spec.get("conv", "gatedgcn"),
                       heads=settings["heads"], norm=settings["norm"], pe_levels=task.levels - 1,
                       pool=spec.get("pool", "mean"))


def evaluate(model, task, graphs: list, batch_size: int) -> dict:
    model.eval()
    with torch.no_grad():
        pairs = [task.select(model(batch), batch) for batch in
                 (Batch.from_data_list(graphs[i:i + batch_size]) for i in range(0, len(graphs), batch_size))]
    return task.scores(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))


def train_one(name: str, spec: dict, seed: int, settings: dict) -> dict:
    """Train ``spec`` on task ``name`` from ``seed`` (module docstring's protocol); its test scores, parameter
    count, mean training loss over the last tenth of the steps and seconds. A non-finite loss stops the run, which
    is reported (``diverged_at``) with the scores of the last finite weights."""
    task, train, test = data_of(name, settings)
    torch.manual_seed(seed)
    model = model_for(name, spec, settings, spec.get("hidden"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps = settings["steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    order, losses, diverged, start = [], [], None, time.perf_counter()
    model.train()
    for step in range(steps):
        if len(order) < settings["batch_size"]:
            order += torch.randperm(len(train), generator=generator).tolist()
        batch = Batch.from_data_list([train[i] for i in order[:settings["batch_size"]]])
        del order[:settings["batch_size"]]
        loss = task.loss(*task.select(model(batch), batch))
        if not math.isfinite(loss.item()):
            diverged = step + 1
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip"])
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):] if losses else [math.nan]
    return dict(evaluate(model, task, test, settings["eval_batch"]), parameters=count_parameters(model),
                final_loss=sum(tail) / len(tail), seconds=round(seconds, 1), diverged_at=diverged)


RUNS: dict = {}


def run(name: str, spec: dict, settings: dict) -> dict:
    """``spec`` on task ``name`` for every seed (each run once per process: sections share them), with the mean and
    sample std of every score over the seeds."""
    rows = []
    for seed in settings["seeds"]:
        key = json.dumps([name, spec, seed, settings], sort_keys=True)
        if key not in RUNS:
            RUNS[key] = train_one(name, spec, seed, settings)
        rows.append(RUNS[key])
    task = data_of(name, settings)[0]
    summary = dict(task=name, **spec, metric=task.headline, parameters=rows[0]["parameters"],
                   seconds=sum(r["seconds"] for r in rows), runs=rows)
    for score in ("accuracy", "rmse"):
        if score in rows[0]:
            values = [r[score] for r in rows]
            summary[score] = statistics.fmean(values)
            summary[f"{score}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"  {name:13s} {json.dumps(spec):90s} {task.headline} {summary[task.headline]:.3f} "
          f"± {summary[task.headline + '_std']:.3f} ({summary['seconds']:.0f}s)", flush=True)
    return summary


def constant(name: str, settings: dict) -> dict:
    """The scores of a constant predictor: the majority training class, or the training mean."""
    task, train, test = data_of(name, settings)
    batch = Batch.from_data_list(test)
    rows = batch.y.shape[0]
    if task.kind == "classify":
        majority = int(torch.cat([task.select(g.y, g)[1] for g in train]).mode().values)
        out = torch.nn.functional.one_hot(torch.full((rows,), majority), task.outputs).double()
    else:
        out = torch.zeros(rows, task.outputs, dtype=torch.double)  # the standardised training mean
    return dict(task=name, metric=task.headline, **task.scores(*task.select(out, batch)))


# ---------------------------------------------------------------------------------------------- sections
def token_rows(grid: dict, rows: list, settings: dict, **spec) -> list[dict]:
    """:func:`run` of every (encoder, (tokenisation, PE), task) of a tokenisation grid: GSM layers without their
    local MPNN, ``spec`` added to each run's."""
    return [run(task, dict(tokenization=t, mixer=m, pe=pe, conv=None, **spec), settings)
            for m in grid["mixers"] for t, pe in rows for task in grid["tasks"]]


def result(settings: dict, grid: dict, rows: list, **more) -> dict:
    """A section's record: its settings, grid, rows and the constant predictor of each task."""
    return dict(settings=settings, grid=grid, rows=rows, **more,
                constant=[constant(t, settings) for t in grid["tasks"]])


def section_local(quick: bool) -> dict:
    settings, grid = (QUICK, QUICK_LOCAL) if quick else (SETTINGS, LOCAL)
    return result(settings, grid, token_rows(grid, [(t, True) for t in grid["tokenizations"]], settings))


def section_global(quick: bool) -> dict:
    settings, grid = (QUICK, QUICK_GLOBAL) if quick else (SETTINGS, GLOBAL)
    return result(settings, grid, token_rows(grid, grid["rows"], settings))


def section_counting(quick: bool) -> dict:
    settings, grid = (QUICK, QUICK_COUNTING) if quick else (SETTINGS, COUNTING)
    rows = [run(grid["task"], dict(tokenization=grid["tokenization"], mixer=m, pe=False, conv=None), settings)
            for m in grid["mixers"]]
    return dict(settings=settings, grid=grid, rows=rows, constant=[constant(grid["task"], settings)])


def matched_width(name: str, model: str, target: int, settings: dict) -> int:
    """The multiple of 4 (the attention heads) whose ``model`` has the parameter count closest to ``target``."""
    def gap(width: int) -> int:
        return abs(count_parameters(model_for(name, dict(model=model), settings, width)) - target)

    width = 4
    while gap(width + 4) < gap(width):
        width += 4
    return width


def matched(task: str, spec: dict, settings: dict) -> dict:
    """``spec`` with its ``hidden``: the section's width for GSM++, else the width matching GSM++'s parameters."""
    if spec["model"] == "gsm++":
        return dict(spec, hidden=settings["hidden"])
    target = count_parameters(model_for(task, dict(model="gsm++"), settings))
    return dict(spec, hidden=matched_width(task, spec["model"], target, settings))


def section_baselines(quick: bool) -> dict:
    settings, grid = (QUICK, QUICK_BASELINES) if quick else (SETTINGS, BASELINES)
    rows = [run(task, matched(task, dict(model=model), settings), settings)
            for task in grid["tasks"] for model in grid["models"]]
    return result(settings, grid, rows)


def section_pooling(quick: bool) -> dict:
    settings, grid = (QUICK, QUICK_POOLING) if quick else (SETTINGS, POOLING)
    rows = token_rows(grid, [(t, True) for t in grid["tokenizations"]], settings, pool=grid["pool"])
    return result(settings, grid, rows)


def section_longrange(quick: bool) -> dict:
    settings, grid = (QUICK_LONGRANGE_SETTINGS, QUICK_LONGRANGE) if quick else (LONGRANGE_SETTINGS, LONGRANGE)
    rows, task = token_rows(grid, grid["rows"], settings), grid["tasks"][0]
    models = [run(task, matched(task, spec, settings), settings) for spec in grid["models"]]
    return result(settings, grid, rows, models=models)


# ---------------------------------------------------------------------------------------------- orderings
def _cell(rows: list, **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _better(a: dict, b: dict) -> tuple[bool, bool]:
    """Whether ``a`` scores better than ``b`` on the mean, and by more than the sum of their stds."""
    metric = a["metric"]
    sign = 1 if metric == "accuracy" else -1
    gap = sign * (a[metric] - b[metric])
    return gap > 0, gap > a[f"{metric}_std"] + b[f"{metric}_std"]


def _claim(text: str, pairs: list) -> dict:
    """Claim "``a`` beats ``b``" over ``(a, b)`` pairs: how often it holds on the means, beyond the seeds' spread,
    and how often ``b`` beats ``a`` beyond it (0 = ``a`` best or tied)."""
    pairs = [p for p in pairs if p[0] and p[1]]
    return dict(claim=text, comparisons=len(pairs), holds=sum(_better(a, b)[0] for a, b in pairs),
                beyond_spread=sum(_better(a, b)[1] for a, b in pairs),
                reversed_beyond_spread=sum(_better(b, a)[1] for a, b in pairs))


def orderings(data: dict) -> list[dict]:
    """The paper's orderings (NEXT-WAVE.md §4.3), counted over the measured cells."""
    claims = []
    if "local" in data:
        rows, grid = data["local"]["rows"], data["local"]["grid"]
        for token in ("khop", "hac_bfs"):
            pairs = [(_cell(rows, task=t, mixer=m, tokenization=token), _cell(rows, task=t, mixer=m, tokenization=o))
                     for t in grid["tasks"] for m in grid["mixers"] for o in ("degree", "random", "hac_dfs")]
            claims.append(_claim(f"local tasks: {TOKEN_NAMES[token]} beats node (degree / random) and HAC-DFS "
                                 "(per task × encoder × order)", pairs))
    if "global" in data:
        rows, grid = data["global"]["rows"], data["global"]["grid"]
        pairs = [(_cell(rows, task="connectivity", mixer=m, tokenization="hac_dfs", pe=True),
                  _cell(rows, task="connectivity", mixer=m, tokenization=o, pe=True))
                 for m in grid["mixers"] for o in ("khop", "hac_bfs")]
        claims.append(_claim("connectivity: HAC-DFS beats k-hop and HAC-BFS (per encoder)", pairs))
        for t in grid["tasks"]:
            best = _cell(rows, task=t, mixer="hybrid", tokenization="hac_dfs", pe=True)
            claims.append(_claim(f"{LABELS[t]}: hybrid + HAC-DFS + PE beats every other row",
                                 [(best, r) for r in rows if r["task"] == t and r is not best]))
    if "counting" in data:
        rows = data["counting"]["rows"]
        attention = _cell(rows, mixer="attention")
        claims.append(_claim("colour counting without PE: each recurrent encoder beats attention",
                             [(r, attention) for r in rows if r["mixer"] != "attention"]))
    if "baselines" in data:
        rows, grid = data["baselines"]["rows"], data["baselines"]["grid"]
        claims.append(_claim("GSM++ beats GPS and GatedGCN at matched parameters (per task)",
                             [(_cell(rows, task=t, model="gsm++"), _cell(rows, task=t, model=o))
                              for t in grid["tasks"] for o in ("gps", "gatedgcn")]))
    if "pooling" in data and "local" in data:
        rows, grid, local = data["pooling"]["rows"], data["pooling"]["grid"], data["local"]["rows"]
        for token in grid["tokenizations"]:
            pairs = [(_cell(rows, task=t, mixer=m, tokenization=token), _cell(local, task=t, mixer=m, tokenization=o))
                     for t in grid["tasks"] for m in grid["mixers"] for o in ("degree", "random", "hac_dfs")]
            claims.append(_claim(f"local tasks, summed tokens: {TOKEN_NAMES[token]} beats node (degree / random) and "
                                 "HAC-DFS (per task × encoder × order)", pairs))
    if "longrange" in data:
        tokens, grid, models = data["longrange"]["rows"], data["longrange"]["grid"], data["longrange"]["models"]
        claims.append(_claim("long-range connectivity: HAC-DFS beats k-hop and HAC-BFS (per encoder)",
                             [(_cell(tokens, mixer=m, tokenization="hac_dfs", pe=True),
                               _cell(tokens, mixer=m, tokenization=o, pe=True))
                              for m in grid["mixers"] for o in ("khop", "hac_bfs")]))
        claims.append(_claim("long-range connectivity: node tokens with PE beat node tokens without (per encoder)",
                             [(_cell(tokens, mixer=m, tokenization="degree", pe=True),
                               _cell(tokens, mixer=m, tokenization="degree", pe=False)) for m in grid["mixers"]]))
        best = _cell(tokens, mixer="hybrid", tokenization="hac_dfs", pe=True)
        claims.append(_claim("long-range connectivity: hybrid + HAC-DFS + PE beats every other tokenisation row",
                             [(best, r) for r in tokens if r is not best]))
        baselines = [r for r in models if r["model"] != "gsm++"]
        claims.append(_claim("long-range connectivity: GSM++ (HAC-DFS, MoT) beats GPS and GatedGCN at matched "
                             "parameters", [(g, b) for g in models if g["model"] == "gsm++" for b in baselines]))
    return [c for c in claims if c["comparisons"]]


# ---------------------------------------------------------------------------------------------- report
def cell(row: dict | None) -> str:
    if row is None:
        return ""
    metric = row["metric"]
    scale = 100 if metric == "accuracy" else 1
    diverged = " (diverged)" if any(r["diverged_at"] for r in row["runs"]) else ""
    return f"{scale * row[metric]:.1f} ± {scale * row[metric + '_std']:.1f}{diverged}" if metric == "accuracy" else \
        f"{row[metric]:.3f} ± {row[metric + '_std']:.3f}{diverged}"


def constant_cell(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f}" if row["metric"] == "accuracy" else f"{row['rmse']:.3f}"


def header(tasks: list, rows: list) -> str:
    metrics = {r["task"]: r["metric"] for r in rows}
    return " | ".join(f"{LABELS[t]} ({'acc. %' if metrics.get(t) == 'accuracy' else 'RMSE'})" for t in tasks)


def grid_table(section: dict, row_keys: list, describe) -> list[str]:
    tasks, rows = section["grid"]["tasks"], section["rows"]
    lines = ["| encoder | tokenisation | parameters | " + header(tasks, rows) + " |",
             "|---|---|---|" + "---|" * len(tasks)]
    for keys in row_keys:
        cells = [_cell(rows, task=t, **keys) for t in tasks]
        params = sorted({c["parameters"] for c in cells if c}) or [0]
        span = str(params[0]) if len(params) == 1 else f"{params[0]}–{params[-1]}"
        lines.append(f"| {keys['mixer']} | {describe(keys)} | {span} | " + " | ".join(cell(c) for c in cells) + " |")
    constants = {c["task"]: c for c in section["constant"]}
    lines.append("| constant predictor | | 0 | " + " | ".join(constant_cell(constants[t]) for t in tasks) + " |")
    return lines


def budget(section: dict) -> str:
    """The data, model size, training budget and time of a section."""
    settings = section["settings"]
    return (f"{settings['train']} training / {settings['test']} test graphs of {settings['num_nodes'][0]}–"
            f"{settings['num_nodes'][1]} nodes (data seed {settings['data_seed']}); width {settings['hidden']}, "
            f"{settings['layers']} layers; {settings['steps']} AdamW steps of {settings['batch_size']} graphs "
            f"(lr {settings['lr']}, cosine); seeds {settings['seeds']}; {section['seconds']:.0f} s wall, "
            f"{section['cpu_seconds']:.0f} s CPU (one thread), load average {section['load']['loadavg_1m']:.1f}.")


def markdown(data: dict) -> str:
    machine = data.get("machine", {})
    lines = ["# GSM++ on its synthetic graph tasks (all data synthetic)", "",
             "Produced by `python benchmarks/graphs.py` (its docstring states the protocol); the analogues of GSM++'s "
             "Tables 1–2 (Behrouz et al., ICML 2025, arXiv 2411.15671) at CPU scale. Cells: mean ± sample std over "
             f"the seeds. Machine: {machine.get('cpu_model', '?')}, torch {machine.get('torch')}, one thread.", ""]
    if "local" in data:
        s = data["local"]
        lines += ["## Local tasks (Table 1): tokenisations, no local MPNN, hierarchical PE on", "",
                  budget(s), ""]
        keys = [dict(mixer=m, tokenization=t) for m in s["grid"]["mixers"] for t in s["grid"]["tokenizations"]]
        lines += grid_table(s, keys, lambda k: TOKEN_NAMES[k["tokenization"]]) + [""]
    if "global" in data:
        s = data["global"]
        lines += ["## Global tasks (Table 2): tokenisations, no local MPNN", "",
                  budget(s), ""]
        keys = [dict(mixer=m, tokenization=t, pe=pe) for m in s["grid"]["mixers"] for t, pe in s["grid"]["rows"]]
        lines += grid_table(s, keys, lambda k: TOKEN_NAMES[k["tokenization"]] + ("" if k["pe"] else ", **w/o PE**"))
        lines.append("")
    if "counting" in data:
        s = data["counting"]
        c = s["constant"][0]
        lines += ["## Counting without PE (Theorem 1): node tokens, colour counting", "",
                  budget(s), "",
                  "| encoder | parameters | accuracy % | RMSE |", "|---|---|---|---|"]
        lines += [f"| {r['mixer']} | {r['parameters']} | {cell(r)} | {r['rmse']:.3f} ± {r['rmse_std']:.3f} |"
                  for r in s["rows"]]
        lines += [f"| constant predictor | 0 | {100 * c['accuracy']:.1f} | {c['rmse']:.3f} |", ""]
    if "baselines" in data:
        s = data["baselines"]
        tasks, rows = s["grid"]["tasks"], s["rows"]
        lines += ["## GSM++ against GPS and GatedGCN at matched parameters (hierarchical PE for all)", "",
                  budget(s) + " Parameters (width) per task below the scores.",
                  "", "| model | " + header(tasks, rows) + " |", "|---|" + "---|" * len(tasks)]
        for model in s["grid"]["models"]:
            lines.append(f"| {model} | " + " | ".join(cell(_cell(rows, task=t, model=model)) for t in tasks) + " |")
        constants = {c["task"]: c for c in s["constant"]}
        lines.append("| constant predictor | " + " | ".join(constant_cell(constants[t]) for t in tasks) + " |")
        lines += ["", "| model | " + " | ".join(LABELS[t] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
        for model in s["grid"]["models"]:
            cells = [_cell(rows, task=t, model=model) for t in tasks]
            lines.append(f"| {model} | " + " | ".join(f"{c['parameters']} ({c['hidden']})" for c in cells) + " |")
        lines.append("")
    if "pooling" in data:
        s = data["pooling"]
        lines += ["## Local tasks with summed tokens: k-hop and HAC-BFS tokens that add their nodes up", "",
                  budget(s) + " Compare with the mean-pooled rows of the local table.", ""]
        keys = [dict(mixer=m, tokenization=t) for m in s["grid"]["mixers"] for t in s["grid"]["tokenizations"]]
        lines += grid_table(s, keys, lambda k: TOKEN_NAMES[k["tokenization"]] + ", sum") + [""]
    if "longrange" in data:
        s = data["longrange"]
        lines += ["## Long-range connectivity: forests of 2–3 random trees (32–64 nodes)", "",
                  budget(s) + " Tokenisation rows without a local MPNN; then the full models (GatedGCN local "
                  "branch), GPS and GatedGCN at GSM++'s (HAC-DFS) parameter count.", ""]
        keys = [dict(mixer=m, tokenization=t, pe=pe) for m in s["grid"]["mixers"] for t, pe in s["grid"]["rows"]]
        lines += grid_table(s, keys, lambda k: TOKEN_NAMES[k["tokenization"]] + ("" if k["pe"] else ", **w/o PE**"))
        lines += ["", "| model | parameters (width) | connectivity (acc. %) |", "|---|---|---|"]
        for row in s["models"]:
            name = row["model"] + (" (MoT)" if row.get("tokenization") == "mixture" else "")
            lines.append(f"| {name} | {row['parameters']} ({row['hidden']}) | {cell(row)} |")
        lines.append("")
    claims = orderings(data)
    if claims:
        lines += ["## The paper's orderings at this scale", "",
                  "\"Beyond spread\": by more than the sum of the two standard deviations over the seeds. The last "
                  "column counts the comparisons the other side wins beyond spread (0: best or tied).", "",
                  "| claim | comparisons | holds (means) | holds beyond spread | reversed beyond spread |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['comparisons']} | {c['holds']} | {c['beyond_spread']} | "
                  f"{c['reversed_beyond_spread']} |" for c in claims]
        lines.append("")
    return "\n".join(lines)


def write_markdown(path: Path, data: dict) -> None:
    """The tables, then the hand-written notes kept from the file after :data:`NOTES_MARK`."""
    write_keeping_notes(path, markdown(data), NOTES_MARK)


SECTIONS = {"local": section_local, "global": section_global, "counting": section_counting,
            "baselines": section_baselines, "pooling": section_pooling, "longrange": section_longrange}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=list(SECTIONS), action="append")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    setup = mc.setup_torch()
    torch.set_num_threads(1)
    path = args.out.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data["machine"] = mc.machine_info(dict(setup, threads=1))
    for name in args.section or list(SECTIONS):
        print(f"== {name}", flush=True)
        start, cpu = time.perf_counter(), time.process_time()
        data[name] = dict(SECTIONS[name](args.quick), quick=args.quick, seconds=round(time.perf_counter() - start, 1),
                          cpu_seconds=round(time.process_time() - cpu, 1), load=mc.cpu_load())
        data["orderings"] = orderings(data)
        path.write_text(json.dumps(data, indent=1))
        write_markdown(args.out, data)
    print(markdown(data))


if __name__ == "__main__":
    main()
