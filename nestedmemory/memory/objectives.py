"""Attentional biases (inner objectives) ℓ(M(k); v) and their output gradients (Miras §5.1, SPEC §4.2).

``loss`` is the literal objective (used by the recurrent path through autograd); ``output_grad`` is its
hand-derived gradient with respect to the prediction ``M(k)`` (used by the chunked path). Tests check the two
agree. Both act on the last axis; ``threshold`` (Yaad's δ_t) and ``shift`` (Δ_t) broadcast against the
prediction without its last axis.
"""

from __future__ import annotations

import torch


def loss(objective: str, pred, v, *, p: float, eps: float, threshold=None, shift=None):
    """Per-token inner loss, shape ``pred.shape[:-1]``."""
    e = pred - v
    if objective == "dot":
        return -(pred * v).sum(-1)
    if objective == "l2":
        return 0.5 * (e * e).sum(-1)
    if objective == "lp":
        return ((e * e + eps) ** (p / 2)).sum(-1)
    if objective == "huber":  # H(‖e‖₂): ½‖e‖² inside, δ(‖e‖ − ½δ) outside (C¹ at ‖e‖ = δ)
        sq = (e * e).sum(-1)
        return torch.where(_inside(e, threshold), 0.5 * sq, threshold * (torch.sqrt(sq + eps) - 0.5 * threshold))
    if objective == "robust":
        return 0.5 * (e * e).sum(-1) + shift * torch.sqrt((e * e).sum(-1) + eps)
    raise ValueError(f"unknown objective {objective!r}")


def output_grad(objective: str, pred, v, *, p: float, eps: float, threshold=None, shift=None):
    """``∂ℓ/∂M(k)``, same shape as ``pred``."""
    e = pred - v
    if objective == "dot":
        return -v
    if objective == "l2":
        return e
    if objective == "lp":
        return p * e * (e * e + eps) ** (p / 2 - 1)
    if objective == "huber":
        outside = threshold.unsqueeze(-1) * e * torch.rsqrt((e * e).sum(-1, keepdim=True) + eps)
        return torch.where(_inside(e, threshold).unsqueeze(-1), e, outside)
    if objective == "robust":
        return e * (1 + shift.unsqueeze(-1) * torch.rsqrt((e * e).sum(-1, keepdim=True) + eps))
    raise ValueError(f"unknown objective {objective!r}")


def _inside(e, threshold):
    """Yaad's switch: the ℓ2 branch while ``‖M(k) − v‖₂ ≤ δ_t``; outside, the normalised residual ``δ_t e/‖e‖₂``
    (the Huber loss of the residual norm, Miras Eq. 15; docs/decisions.md says why not the coordinate-wise sign)."""
    return (e.detach() * e.detach()).sum(-1) <= threshold.detach() ** 2
