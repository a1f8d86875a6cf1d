"""The catalogue of valid rule combinations and stable random inputs for them (self-checks and tests)."""

from __future__ import annotations

import itertools

import torch

from .rule import LEARNERS, MEMORIES, OBJECTIVES, RETENTIONS, MemoryRule


def all_rules(chunk_size: int = 4, **overrides):
    """Every valid combination of the four Miras choices (``omega`` is ``gd`` under another name)."""
    for memory, objective, retention, learner in itertools.product(MEMORIES, OBJECTIVES, RETENTIONS, LEARNERS):
        if learner == "omega":
            continue
        options = dict(memory=memory, objective=objective, retention=retention, learner=learner,
                       chunk_size=chunk_size, shrink=0.01)
        options.update(overrides)
        try:
            yield MemoryRule(**options)
        except ValueError:
            continue


def random_inputs(rule: MemoryRule, batch: int, length: int, heads: int, dim: int, *, dtype=torch.float64,
                  generator=None, requires_grad: bool = False):
    """``(q, k, v, gates)``: unit-norm q, k, v and gates in their stable ranges (lr ∈ (0, 0.05),
    decay ∈ (0, 0.2), momentum ∈ (0, 0.9), threshold ∈ (0.5, 1.5), shift ∈ (0.1, 0.5), window gates ∈ (0, 1))."""
    def unit():
        x = torch.randn(batch, length, heads, dim, dtype=dtype, generator=generator)
        return torch.nn.functional.normalize(x, dim=-1)

    def uniform(lo, hi, *extra):
        return lo + (hi - lo) * torch.rand(batch, length, heads, *extra, dtype=dtype, generator=generator)

    gates = {"lr": uniform(0.0, 0.05)}
    if rule.retention != "none":
        gates["decay"] = uniform(0.0, 0.2)
    if rule.uses_momentum:
        gates["momentum"] = uniform(0.0, 0.9)
    if rule.objective == "huber":
        gates["threshold"] = uniform(0.5, 1.5)
    if rule.objective == "robust":
        gates["shift"] = uniform(0.1, 0.5)
    if rule.window > 1:
        gates["window_gates"] = uniform(0.0, 1.0, rule.window)
    tensors = [unit(), unit(), unit()]
    if requires_grad:
        for t in tensors + list(gates.values()):
            t.requires_grad_(True)
    return (*tensors, gates)
