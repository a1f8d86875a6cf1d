"""Evaluation suites and synthetic tasks: in-repo, seeded generators after the public recipes (not the official
data sets), each a module with the same interface:

- ``generate(n, *, seed, vocab_size, seq_len, **options) -> dict``: ``input_ids`` and ``labels`` (LongTensors
  ``[n, T]``, ``-100`` where not scored, Hugging Face convention: ``labels[:, t]`` is predicted from position
  ``t − 1``) plus per-example metadata (bins, depths, lengths, …); deterministic given ``seed``.
- ``evaluate(model, *, n, seed, batch_size, **options) -> dict``: accuracies in [0, 1], overall and per bin /
  depth / length / task, from one forward pass per batch (argmax at the scored positions; a multi-token answer
  is teacher-forced and counts only if all its tokens are right).

Suites (:data:`SUITES`): ``mqar`` (Zoology), ``mad`` (the six MAD tasks), ``niah`` (RULER S-NIAH-1/2/3),
``babilong`` (bAbI qa1–qa5 in background text), ``formal`` (the formal languages of Irie et al. 2023),
``continual`` (class-incremental sequence classification). :func:`train_on_task` trains any model on any suite;
:mod:`.report` writes results tables and the needle heatmap.
"""

from __future__ import annotations

import importlib

from .training import train_on_task

SUITE_NAMES = ("mqar", "mad", "niah", "babilong", "formal", "continual")

__all__ = ["SUITES", "SUITE_NAMES", "train_on_task"]


def __getattr__(name: str):
    # SUITES is built on first use, so ``python -m nestedmemory.tasks.<suite>`` does not import its own module twice.
    if name == "SUITES":
        suites = {suite: importlib.import_module(f"{__name__}.{suite}") for suite in SUITE_NAMES}
        globals()["SUITES"] = suites
        return suites
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
