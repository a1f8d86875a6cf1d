"""The chunk-size mismatch of chunkwise memories (TNT §2.2 challenge 3, Fig. 2; SPEC §1.6, §11.6): a model trained
with chunk C is evaluated with other inference chunk sizes.

What it does. For every training chunk ``C`` in ``--train-chunks``: a tiny Titans LMM (``from_preset("titans-lmm",
size="tiny")``: 2 blocks, width 64, 4 memory heads, depth-2 MLP memory, momentum + decay) is trained with
``chunk_size=C`` (and the same inner step ``--memory-lr`` at every C: the layer's default step depends on C, which
would confound the comparison) for ``--steps`` AdamW steps (``train_on_task``: warm-up + cosine) on ``--task``:
``lm``, byte-level language modelling of the embedded Shakespeare (TNT Fig. 2 measures LM perplexity;
``--seq-len`` tokens per sequence, the first 32K bytes held out), or ``mqar`` (in-repo Zoology generator:
``--kv-pairs`` key-value pairs over ``--vocab`` tokens; a fresh batch per step). Then every memory layer's rule gets
each inference chunk size of ``--eval-chunks`` in turn (``dataclasses.replace`` on the frozen rule; nothing else
changes) and the model is scored on the same held-out batches: mean cross-entropy over the scored positions (and
MQAR's query accuracy). At this size the memory barely matters for ``lm`` (docs/tnt.md); the documented run is
``mqar``.

Output: a table on stdout, ``benchmarks/results/tnt_chunk_mismatch.json`` and the table in ``docs/tnt.md``'s
results section is copied from it by hand. A diverged training run (non-finite loss) is recorded, not evaluated.
CPU time grows with ``--steps`` (≈0.07–0.15 s per MQAR step on 2 idle cores, smaller C slower).
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

from nestedmemory.data import TextData, load_tokenizer
from nestedmemory.layers import MemoryMixer
from nestedmemory.models import from_preset
from nestedmemory.models.presets import TITANS
from nestedmemory.runtime import configure_cpu
from nestedmemory.tasks import mqar, train_on_task

RESULTS = Path(__file__).parent / "results" / "tnt_chunk_mismatch.json"


class Shakespeare:
    """The embedded corpus as a task suite for ``train_on_task`` (``generate`` returns the next training batch)
    plus its held-out batches."""

    def __init__(self, seq_len: int, batch_size: int, seed: int, held_out_tokens: int = 32768):
        self.data = TextData("shakespeare", load_tokenizer("byte"), seq_len, held_out_tokens)
        self.stream = self.data.training_batches(batch_size, seed)
        self.held_out = [dict(input_ids=x, labels=x) for x in self.data.validation_batches(batch_size)]

    def generate(self, batch_size: int, seed: int) -> dict:
        x = next(self.stream)
        return dict(input_ids=x, labels=x)


def set_chunk_size(model, chunk_size: int) -> None:
    """Give every memory layer of ``model`` the inference chunk size ``chunk_size``."""
    for module in model.modules():
        if isinstance(module, MemoryMixer):
            module.rule = replace(module.rule, chunk_size=chunk_size)


@torch.no_grad()
def held_out_loss(model, batches) -> float:
    """Mean cross-entropy over the scored positions of the held-out ``batches``."""
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss) * n
        count += n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["lm", "mqar"], default="lm")
    parser.add_argument("--train-chunks", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--eval-chunks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--memory-lr", type=float, default=0.0125,
                        help="the memories' initial inner step θ (bound 4θ) at every C, so only C differs; 0: "
                             "the layer's defaults (they depend on C)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--kv-pairs", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configure_cpu()
    if args.task == "mqar":
        task = dict(vocab_size=args.vocab, seq_len=args.seq_len, num_kv_pairs=args.kv_pairs)
        data = mqar.generate(args.eval_examples, seed=10_000 + args.seed, **task)
        held_out = [{name: data[name][i:i + args.batch_size] for name in ("input_ids", "labels")}
                    for i in range(0, args.eval_examples, args.batch_size)]
        vocab = args.vocab
    else:
        task, vocab = {}, 256
    runs = []
    for train_chunk in args.train_chunks:
        torch.manual_seed(args.seed)
        steps = {} if args.memory_lr == 0 else dict(lr_init=args.memory_lr, lr_max=4 * args.memory_lr)
        memory = dict(TITANS, chunk_size=train_chunk, **steps)
        model = from_preset("titans-lmm", size="tiny", memory=memory, vocab_size=vocab)
        if args.task == "lm":
            suite = Shakespeare(args.seq_len, args.batch_size, args.seed)
            held_out = suite.held_out
        else:
            suite = mqar
        start = time.time()
        losses = train_on_task(model, suite, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
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
            evals[chunk] = {"loss": held_out_loss(model, held_out)}
            if args.task == "mqar":
                evals[chunk]["accuracy"] = mqar.evaluate(model, n=args.eval_examples, seed=10_000 + args.seed,
                                                         batch_size=args.batch_size, **task)["accuracy"]
            print(f"train C={train_chunk:3d}  eval C={chunk:3d}  loss {evals[chunk]['loss']:.4f}  "
                  + (f"acc {evals[chunk]['accuracy']:.3f}" if "accuracy" in evals[chunk] else ""), flush=True)
        finite = [c for c in evals if math.isfinite(evals[c]["loss"])]  # a memory may diverge at another C
        best = min(finite, key=lambda c: evals[c]["loss"]) if finite else None
        runs.append({"train_chunk": train_chunk, "train_seconds": round(train_s, 1),
                     "final_train_loss": sum(losses[-20:]) / len(losses[-20:]), "best_eval_chunk": best,
                     "eval": {str(c): v for c, v in evals.items()}})

    header = "| train C | " + " | ".join(f"eval C={c}" for c in args.eval_chunks) + " | best |"
    print(f"\nheld-out {args.task} loss" + (" (query accuracy)" if args.task == "mqar" else "") + "\n" + header)
    print("|" + "---|" * (len(args.eval_chunks) + 2))
    for run in runs:
        if "diverged_at_step" in run:
            print(f"| {run['train_chunk']} | diverged at step {run['diverged_at_step']} |")
            continue
        cells = [f"{run['eval'][str(c)]['loss']:.3f}" + (f" ({run['eval'][str(c)]['accuracy']:.2f})"
                                                          if args.task == "mqar" else "") for c in args.eval_chunks]
        print(f"| {run['train_chunk']} | " + " | ".join(cells) + f" | {run['best_eval_chunk']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setup": {"model": "titans-lmm tiny", "task": args.task, "seq_len": args.seq_len, **task, "steps": args.steps,
                  "memory_lr": args.memory_lr,
                  "batch_size": args.batch_size, "lr": args.lr, "eval_examples": args.eval_examples,
                  "seed": args.seed, "torch": torch.__version__, "machine": platform.processor() or platform.machine()},
        "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
