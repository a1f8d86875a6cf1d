"""TNT's speed claim at CPU scale (issue 13, target 6; TNT Table 1: time to reach a training loss, Titans C = 8 as
the 1.00× reference): ``tnt`` with local chunks ``C_L`` 8–64 against ``titans-lmm`` at memory chunk 8 and 64, at the
same size, on the embedded corpus.

Size: the ``small`` training size (``nestedmemory train``'s default: the tiny preset at width 128, 4 layers, 4 memory
heads of 32), every model from its preset with only the memory's chunking changed. ``tnt``: global chunk
``C_G = 256`` and one local memory of chunk ``C_L`` reset every ``S_L = 256`` tokens (TNT's efficiency runs use
``S_L = C_G``; its shards are folded into the batch and run as one computation). The Titans rows keep their preset's
momentum learner, TNT its preset's plain GD (TNT's experiments, SPEC §7.2).

Two measurements, both of the same models:
- Throughput: one training step (causal-LM loss on ``batch × length`` byte tokens, backward, AdamW) per model in
  alternating rounds, the first a checked warm-up (finite loss and gradients); tokens/s over the median step time.
- Time to a training loss: each model trained from the same seed on the same batches of the embedded Shakespeare
  (``train_on_task``: AdamW, warm-up + cosine), one model at a time; the step at which the mean training loss of
  the last ``window`` steps first reaches ``target`` (nats per byte), and the time to it, that step count times
  the median step time of the throughput rounds (a per-step figure measured side by side, not the noisier wall
  clock of separate runs, which is also recorded). Also the final held-out loss.

Writes ``docs/tnt_speed.md`` and its JSON twin (``--out``); hand-written notes below ``NOTES_MARK`` are kept.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc  # noqa: E402
from tnt_chunk_mismatch import Shakespeare, held_out_loss  # noqa: E402
from training_step import median_step_seconds, tokens  # noqa: E402

from nestedmemory.models import from_preset  # noqa: E402
from nestedmemory.tasks import train_on_task  # noqa: E402
from nestedmemory.tasks.report import markdown_table, models_benchmark_main  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "tnt_speed.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/tnt_speed.py keeps everything after this line. -->"
SIZE = dict(hidden_size=128, num_layers=4)
GLOBAL_CHUNK = SHARD = 256
REFERENCE = "titans-lmm C=8"
MODELS = {
    "titans-lmm C=8": ("titans-lmm", dict(chunk_size=8)),
    "titans-lmm C=64": ("titans-lmm", dict(chunk_size=64)),
    **{f"tnt C_L={c}": ("tnt", dict(chunk_size=GLOBAL_CHUNK, local_chunk_sizes=[c], shard_sizes=SHARD))
       for c in (8, 16, 32, 64)},
}
FULL = dict(batch=2, length=1024, repeats=3, steps=400, lr=3e-3, target=2.1, window=20, seed=0,
            held_out=32768)
QUICK = dict(batch=1, length=256, repeats=1, steps=4, lr=3e-3, target=6.0, window=2, seed=0,
             held_out=1024)


def build(name: str, seed: int):
    preset, memory = MODELS[name]
    torch.manual_seed(seed)
    return from_preset(preset, **SIZE, memory=memory)


def throughput(settings: dict, names: list[str]) -> dict:
    """Median seconds per training step of each model, rounds alternating between the models."""
    models = {name: build(name, settings["seed"]) for name in names}
    medians = median_step_seconds(models, tokens(settings), settings["repeats"])
    return {name: dict(parameters=sum(p.numel() for p in models[name].parameters()), seconds=medians[name])
            for name in names}


def smoothed(losses: list[float], window: int) -> list[float]:
    """The mean of the last ``window`` training losses at every step (fewer at the start)."""
    return [sum(losses[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(losses))]


def train(name: str, settings: dict) -> dict:
    """Train ``name`` on the embedded corpus; its smoothed loss curve, the step reaching the target, held-out loss."""
    model = build(name, settings["seed"])
    suite = Shakespeare(settings["length"], settings["batch"], settings["seed"], settings["held_out"])
    start = time.perf_counter()
    losses = train_on_task(model, suite, steps=settings["steps"], batch_size=settings["batch"], lr=settings["lr"],
                           seed=settings["seed"])
    wall = time.perf_counter() - start
    curve = smoothed(losses, settings["window"])
    finite = all(math.isfinite(loss) for loss in losses)
    reached = next((i + 1 for i, loss in enumerate(curve) if loss <= settings["target"]), None) if finite else None
    return dict(train_seconds=wall, steps_to_target=reached, final_train_loss=curve[-1], finite=finite,
                held_out_loss=held_out_loss(model, suite.held_out) if finite else None,
                curve=[round(loss, 4) for loss in curve])


def run(settings: dict, names: list[str]) -> dict:
    setup = mc.setup_torch()
    rows = throughput(settings, names)
    for name in names:
        rows[name].update(train(name, settings))
        row = rows[name]
        row["tokens_per_s"] = settings["batch"] * settings["length"] / row["seconds"]
        row["time_to_target"] = None if row["steps_to_target"] is None else row["steps_to_target"] * row["seconds"]
        print(f"  {name:16s} {row['tokens_per_s']:7.0f} tok/s  steps to {settings['target']}: "
              f"{row['steps_to_target']}  final {row['final_train_loss']:.3f}", flush=True)
    return {"settings": settings, "models": {name: MODELS[name] for name in names}, "size": SIZE,
            "machine": mc.machine_info(setup), "load": mc.cpu_load(), "source": mc.source_info(), "rows": rows}


def markdown(data: dict) -> str:
    s, rows = data["settings"], data["rows"]
    reference = rows.get(REFERENCE)
    header = ["model", "parameters", "s / step", "tokens/s", f"steps to {s['target']}", f"time to {s['target']} (s)",
              f"speed-up vs {REFERENCE}", "final train loss", "held-out loss"]

    def speedup(row):
        if reference is None or reference["time_to_target"] is None or row["time_to_target"] is None:
            return "—"
        return f"{reference['time_to_target'] / row['time_to_target']:.2f}×"

    table = [[name, f"{r['parameters'] / 1e6:.3f}M", f"{r['seconds']:.3f}", f"{r['tokens_per_s']:,.0f}",
              r["steps_to_target"] or "not reached", "—" if r["time_to_target"] is None else
              f"{r['time_to_target']:.1f}", speedup(r), f"{r['final_train_loss']:.3f}",
              "—" if r["held_out_loss"] is None else f"{r['held_out_loss']:.3f}"] for name, r in rows.items()]
    return (f"# TNT's speed at CPU scale (TNT Table 1)\n\nGenerated by `python benchmarks/tnt_speed.py` (the script's "
            f"docstring gives the protocol): width {data['size']['hidden_size']}, {data['size']['num_layers']} layers; "
            f"TNT global chunk {GLOBAL_CHUNK}, shard {SHARD}; batch {s['batch']} × {s['length']} byte tokens; "
            f"{s['steps']} AdamW steps (lr {s['lr']}), seed {s['seed']}; target: the mean training loss of the "
            f"last {s['window']} steps ≤ {s['target']} nats/byte; step times: medians of {s['repeats']} alternating "
            f"rounds; {mc.provenance(data)}.\n\n"
            + markdown_table(header, table))


def main(argv=None) -> None:
    models_benchmark_main(sys.argv[1:] if argv is None else argv, doc=__doc__, models=list(MODELS),
                          settings=dict(full=FULL, quick=QUICK), run=run, markdown=markdown, out=OUT,
                          mark=NOTES_MARK)


if __name__ == "__main__":
    main()
