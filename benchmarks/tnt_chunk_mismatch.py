"""The chunk-size mismatch of chunkwise memories (TNT §2.2 challenge 3, Fig. 2; SPEC §1.6, §11.6): a model trained
with chunk C is evaluated with other inference chunk sizes.

What it does. For every training chunk ``C`` in ``--train-chunks``: a tiny Titans LMM (``from_preset("titans-lmm",
size="tiny")``: 2 blocks, width 64, 4 memory heads, depth-2 MLP memory, momentum + decay) is trained with
``chunk_size=C`` on MQAR (in-repo Zoology generator: ``--kv-pairs`` key-value pairs, sequences of ``--seq-len``
tokens over ``--vocab`` tokens; a fresh batch per step) for ``--steps`` AdamW steps (``train_on_task``: warm-up +
cosine). Then every memory layer's rule gets each inference chunk size of ``--eval-chunks`` in turn
(``dataclasses.replace`` on the frozen rule; nothing else changes) and the model is scored on the same held-out
MQAR batches: mean cross-entropy over the query positions and query accuracy.

Output: a table on stdout, ``benchmarks/results/tnt_chunk_mismatch.json`` and the table in ``docs/tnt.md``'s
results section is copied from it by hand. A diverged training run (non-finite loss) is recorded, not evaluated.
CPU time grows with ``--steps`` (≈1 s per step on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from nestedmemory.layers import MemoryMixer
from nestedmemory.models import from_preset
from nestedmemory.models.presets import TITANS
from nestedmemory.runtime import configure_cpu
from nestedmemory.tasks import mqar, train_on_task

RESULTS = Path(__file__).parent / "results" / "tnt_chunk_mismatch.json"


def set_chunk_size(model, chunk_size: int) -> None:
    """Give every memory layer of ``model`` the inference chunk size ``chunk_size``."""
    for module in model.modules():
        if isinstance(module, MemoryMixer):
            module.rule = replace(module.rule, chunk_size=chunk_size)


@torch.no_grad()
def held_out_loss(model, data, batch_size: int) -> float:
    """Mean cross-entropy over the scored (query) positions of ``data``."""
    total, count = 0.0, 0
    for start in range(0, data["input_ids"].shape[0], batch_size):
        ids, labels = data["input_ids"][start:start + batch_size], data["labels"][start:start + batch_size]
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-chunks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--eval-chunks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--kv-pairs", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_cpu()
    task = dict(vocab_size=args.vocab, seq_len=args.seq_len, num_kv_pairs=args.kv_pairs)
    held_out = mqar.generate(args.eval_examples, seed=10_000 + args.seed, **task)
    runs = []
    for train_chunk in args.train_chunks:
        torch.manual_seed(args.seed)
        model = from_preset("titans-lmm", size="tiny", memory=dict(TITANS, chunk_size=train_chunk),
                            vocab_size=args.vocab)
        start = time.time()
        losses = train_on_task(model, mqar, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, **task)
        train_s = time.time() - start
        diverged = next((step for step, loss in enumerate(losses) if not math.isfinite(loss)), None)
        if diverged is not None:  # a diverged model says nothing about chunk sizes: record it, skip its evaluation
            print(f"train C={train_chunk:3d}  diverged: first non-finite training loss at step {diverged}", flush=True)
            runs.append({"train_chunk": train_chunk, "train_seconds": round(train_s, 1),
                         "diverged_at_step": diverged})
            continue
        evals = {}
        for chunk in args.eval_chunks:
            set_chunk_size(model, chunk)
            accuracy = mqar.evaluate(model, n=args.eval_examples, seed=10_000 + args.seed,
                                     batch_size=args.batch_size, **task)["accuracy"]
            evals[chunk] = {"loss": held_out_loss(model, held_out, args.batch_size), "accuracy": accuracy}
            print(f"train C={train_chunk:3d}  eval C={chunk:3d}  loss {evals[chunk]['loss']:.4f}  "
                  f"acc {accuracy:.3f}", flush=True)
        best = min(evals, key=lambda c: evals[c]["loss"])
        runs.append({"train_chunk": train_chunk, "train_seconds": round(train_s, 1),
                     "final_train_loss": sum(losses[-20:]) / len(losses[-20:]), "best_eval_chunk": best,
                     "eval": {str(c): v for c, v in evals.items()}})

    header = "| train C | " + " | ".join(f"eval C={c}" for c in args.eval_chunks) + " | best |"
    print("\nheld-out MQAR loss (query accuracy)\n" + header)
    print("|" + "---|" * (len(args.eval_chunks) + 2))
    for run in runs:
        if "diverged_at_step" in run:
            print(f"| {run['train_chunk']} | diverged at step {run['diverged_at_step']} |")
            continue
        cells = [f"{run['eval'][str(c)]['loss']:.3f} ({run['eval'][str(c)]['accuracy']:.2f})"
                 for c in args.eval_chunks]
        print(f"| {run['train_chunk']} | " + " | ".join(cells) + f" | {run['best_eval_chunk']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setup": {"model": "titans-lmm tiny", "task": "mqar", **task, "steps": args.steps,
                  "batch_size": args.batch_size, "lr": args.lr, "eval_examples": args.eval_examples,
                  "seed": args.seed, "torch": torch.__version__, "machine": platform.processor() or platform.machine()},
        "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
