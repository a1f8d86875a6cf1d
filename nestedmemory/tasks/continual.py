"""Class-incremental continual learning on generated sequences (the setting of Nested Learning §9's CLINC / Banking
/ DBpedia experiments, SPEC §6.7, at toy scale): an in-repo stream, not those data sets.

Every class is a random first-order Markov chain over ``alphabet_size`` symbols (transition rows drawn from a
Dirichlet with ``concentration``; small values give peaked, easily told-apart chains), fixed by ``structure_seed``.
An example is ``seq_len − 2`` symbols from its class's chain, then two separator tokens; the label at the last
position is the class token (read at the first separator). The classes are split into tasks of
``classes_per_task`` classes; :func:`run_continual` trains one model on the tasks in order, never revisiting
earlier data, and after each task measures the accuracy on every task seen so far. The prediction is the argmax
over the whole vocabulary (class-incremental: no task identity is given), so forgetting shows as a model that
answers only with the newest classes.

Tokens: symbols ``0 … A − 1``, the separator ``A``, class ``c`` is token ``A + 1 + c``.
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np
import torch

from ..models import count_parameters, from_preset
from .common import IGNORE, batch, check_int, evaluate_data, rng_for
from .report import markdown_table, percent, write_report
from .training import train_on_task


@functools.lru_cache(maxsize=8)
def chains(num_classes: int, alphabet_size: int, concentration: float, structure_seed: int) -> np.ndarray:
    """``[num_classes, A, A]`` transition matrices, one Markov chain per class."""
    rng = np.random.default_rng(structure_seed)
    return rng.dirichlet(np.full(alphabet_size, concentration), size=(num_classes, alphabet_size))


def generate(n: int, *, seed: int, vocab_size: int | None = None, seq_len: int = 34, classes=None,
             num_classes: int = 10, alphabet_size: int = 8, concentration: float = 0.3,
             structure_seed: int = 1234) -> dict:
    """``n`` examples, classes drawn uniformly from ``classes`` (default: all ``num_classes``). ``vocab_size``
    defaults to the tokens needed, ``alphabet_size + 1 + num_classes``. Metadata: ``label`` (the class)."""
    n, seq_len = check_int("n", n), check_int("seq_len", seq_len, 3)
    num_classes, alphabet_size = check_int("num_classes", num_classes), check_int("alphabet_size", alphabet_size, 2)
    if not (isinstance(concentration, (int, float)) and concentration > 0):
        raise ValueError(f"concentration must be a positive number, got {concentration!r}")
    classes = np.arange(num_classes) if classes is None else np.asarray(classes, dtype=np.int64)
    if classes.ndim != 1 or not len(classes) or classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"classes must be a non-empty list of class ids in [0, {num_classes}), got {classes!r}")
    vocab_size = alphabet_size + 1 + num_classes if vocab_size is None else check_int("vocab_size", vocab_size)
    transitions = chains(num_classes, alphabet_size, float(concentration), check_int("structure_seed",
                                                                                      structure_seed, 0))
    rng = rng_for(seed)
    label = rng.choice(classes, size=n)
    symbols = np.empty((n, seq_len - 2), dtype=np.int64)
    symbols[:, 0] = rng.integers(alphabet_size, size=n)
    for t in range(1, seq_len - 2):
        cumulative = transitions[label, symbols[:, t - 1]].cumsum(-1)
        symbols[:, t] = np.minimum((cumulative < rng.random((n, 1))).sum(-1), alphabet_size - 1)
    separator = np.full((n, 2), alphabet_size, dtype=np.int64)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    labels[:, -1] = alphabet_size + 1 + label
    return batch(np.concatenate([symbols, separator], axis=1), labels, vocab_size, label=label)


def evaluate(model, *, n: int, seed: int, batch_size: int, **options) -> dict:
    """Accuracy of ``model`` over ``n`` examples of ``options["classes"]`` (default all), and per class."""
    data = generate(n, seed=seed, **options)
    return evaluate_data(model, data, batch_size=batch_size, exact=False, groups=("label",))


def split_tasks(num_classes: int, classes_per_task: int) -> list[list[int]]:
    """Classes ``0 … num_classes − 1`` in order, in tasks of ``classes_per_task``."""
    if check_int("classes_per_task", classes_per_task) > check_int("num_classes", num_classes) or \
            num_classes % classes_per_task:
        raise ValueError(f"classes_per_task={classes_per_task} must divide num_classes={num_classes}")
    return [list(range(k, k + classes_per_task)) for k in range(0, num_classes, classes_per_task)]


def run_continual(preset: str, *, size: str = "tiny", num_classes: int = 10, classes_per_task: int = 2,
                  steps_per_task: int = 150, batch_size: int = 32, lr: float = 1e-3, eval_n: int = 256,
                  seed: int = 0, model_overrides: dict | None = None, **options) -> dict:
    """Train a fresh ``preset`` model of ``size`` on the tasks in order (``steps_per_task`` steps each, a new
    AdamW per task) and return the forgetting ``matrix`` (``matrix[i][j]``: accuracy on task ``j`` after training
    task ``i``, None for ``j > i``), ``average_accuracy`` (over all tasks after the last) and ``forgetting`` (mean
    over the earlier tasks of their best accuracy minus their final one). ``options`` go to :func:`generate`."""
    tasks = split_tasks(num_classes, classes_per_task)
    options = dict(options, num_classes=num_classes)
    vocab_size = options.get("alphabet_size", 8) + 1 + num_classes
    torch.manual_seed(seed)
    model = from_preset(preset, size=size, **{"vocab_size": vocab_size, **(model_overrides or {})})
    matrix = []
    for i, task in enumerate(tasks):
        train_on_task(model, sys.modules[__name__], steps=steps_per_task, batch_size=batch_size, lr=lr, seed=seed + i,
                      classes=task, **options)
        matrix.append([evaluate(model, n=eval_n, seed=seed + 1_000_003 + j, batch_size=batch_size, classes=classes,
                                **options)["accuracy"] if j <= i else None for j, classes in enumerate(tasks)])
    final = matrix[-1]
    forgetting = [max(row[j] for row in matrix[j:-1]) - final[j] for j in range(len(tasks) - 1)]
    return dict(preset=preset, parameters=count_parameters(model.config), tasks=tasks, matrix=matrix,
                average_accuracy=float(np.mean(final)), forgetting=float(np.mean(forgetting)) if forgetting else 0.0)


def write_table(results: list[dict], settings: dict, out, extra_notes: str = "") -> None:
    """The summary table of :func:`run_continual`'s ``results`` (final accuracy per task, average, forgetting)
    plus every model's forgetting matrix at ``out`` (Markdown), and ``settings`` + ``results`` as JSON."""
    tasks = len(results[0]["tasks"])
    header = ["Model", "parameters"] + [f"task {j + 1}" for j in range(tasks)] + ["average", "forgetting"]
    rows = [[r["preset"], f"{r['parameters']:,}"] + [percent(a) for a in r["matrix"][-1]]
            + [percent(r["average_accuracy"]), percent(r["forgetting"])] for r in results]
    matrices = "".join(
        f"\n\n{r['preset']} (row i: after training task i; column j: accuracy on task j, %):\n\n"
        + markdown_table(["after"] + [f"task {j + 1}" for j in range(tasks)],
                         [[f"task {i + 1}"] + ["" if a is None else percent(a) for a in row]
                          for i, row in enumerate(r["matrix"])]) for r in results)
    notes = ("Accuracy (%) on every task after training on the last one; forgetting = mean over the earlier tasks "
             "of (best accuracy − final accuracy). Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
             + "." + extra_notes + "\n\nForgetting matrices:" + matrices)
    write_report(out, title="Class-incremental continual learning (Markov-chain classes)", header=header,
                 rows=rows, notes=notes, data=dict(settings=settings, results=results))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nestedmemory.tasks.continual",
                                     description="class-incremental continual learning: forgetting per preset")
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--classes-per-task", type=int, default=2)
    parser.add_argument("--steps-per-task", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="docs/continual.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("presets", "out", "threads")}
    results = [run_continual(preset, **settings) for preset in args.presets]
    write_table(results, settings, args.out)


if __name__ == "__main__":
    main()
