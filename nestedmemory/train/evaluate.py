"""Evaluation: next-token loss and perplexity over batches (sums, so processes and batches of any size combine
exactly), the unigram baseline, and the synthetic suites of :mod:`nestedmemory.tasks` as a results table."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..data import batched, documents, pack, token_chunks
from .errors import NonFiniteError


@torch.no_grad()
def loss_sums(model, batches: Iterable[torch.Tensor], prepare: Callable = lambda b: b,
              autocast=contextlib.nullcontext) -> torch.Tensor:
    """``[total nats, predicted tokens]`` of ``model`` on ``batches`` (each batch passed through ``prepare``,
    e.g. a process's share, moved to its device), in fp64."""
    was_training = model.training
    model.eval()
    totals = None
    for batch in batches:
        batch = prepare(batch)
        with autocast():
            loss = model(input_ids=batch, labels=batch).loss
        count = batch.shape[0] * (batch.shape[1] - 1)
        step = torch.stack([loss.double() * count, torch.tensor(count, dtype=torch.float64, device=loss.device)])
        totals = step if totals is None else totals + step
    model.train(was_training)
    return totals if totals is not None else torch.zeros(2, dtype=torch.float64)


def summary(totals: torch.Tensor) -> dict:
    """``loss`` (nats / token), ``perplexity`` and ``tokens`` from :func:`loss_sums`; a NaN or infinite loss
    raises :class:`NonFiniteError` (a broken model is reported, not scored)."""
    nats, tokens = totals.tolist()
    if tokens == 0:
        raise ValueError("no tokens to evaluate: the text is shorter than two tokens")
    if not math.isfinite(nats):
        raise NonFiniteError(f"the loss over {int(tokens)} tokens is {nats / tokens} (not finite): the model's "
                             "weights or outputs are NaN or infinite")
    return dict(loss=nats / tokens, perplexity=math.exp(nats / tokens), tokens=int(tokens))


def text_perplexity(model, tokenizer, path, seq_len: int, batch_size: int, text_field: str = "text",
                    separator: str = "\n\n") -> dict:
    """:func:`summary` of ``model`` on every token of the text source ``path`` (streamed), cut into sequences
    of ``seq_len`` tokens (the last one shorter), plus ``file``."""
    blocks = pack(token_chunks(documents(path, text_field), tokenizer, separator), seq_len, drop_last=False)
    device = next(model.parameters()).device
    totals = loss_sums(model, batched(blocks, batch_size, drop_last=False), lambda batch: batch.to(device))
    return dict(summary(totals), file=str(path))


def unigram_loss(tokens: np.ndarray) -> float:
    """The entropy (nats) of the token distribution of ``tokens``: the lowest loss any unigram model (one fixed
    next-token distribution) reaches on them."""
    counts = np.bincount(tokens)
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())


def run_suites(model, names: list[str], n: int, seed: int, batch_size: int) -> dict[str, dict]:
    """``{suite: results}`` of ``nestedmemory.tasks.SUITES[suite].evaluate``. A model with NaN or infinite
    weights (whose argmax answers would still score), or a NaN or infinite result, raises
    :class:`NonFiniteError`."""
    from ..tasks import SUITES  # imported on request: the suites are optional to training

    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise KeyError(f"unknown suite {unknown[0]!r}; choose from {sorted(SUITES)}")
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise NonFiniteError(f"the model has NaN or infinite weights ({broken[0]} and {len(broken) - 1} more)")
    results = {name: SUITES[name].evaluate(model, n=n, seed=seed, batch_size=batch_size) for name in names}
    for name, value in results_rows(results):
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(f"suite result {name} is {value} (not finite)")
    return results


def results_rows(results: dict[str, dict], prefix: str = "") -> list[list]:
    """``[name, metric, value]`` rows, nested metrics (per bin, per task, …) as ``a/b`` names."""
    rows = []
    for key, value in results.items():
        if isinstance(value, dict):
            rows += results_rows(value, f"{prefix}{key}/")
        else:
            rows.append([f"{prefix}{key}", value])
    return rows


def write_table(results: dict[str, dict], path: Path, title: str) -> tuple[Path, Path]:
    """``path`` (Markdown: suite, metric, value) and its ``.json`` twin."""
    from ..tasks.report import write_report

    rows = [[suite, metric, f"{value:.4g}" if isinstance(value, float) else value]
            for suite, metrics in results.items() for metric, value in results_rows(metrics)]
    return write_report(path, title=title, header=["suite", "metric", "value"], rows=rows, data=results)
