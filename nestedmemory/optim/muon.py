"""Muon: momentum orthogonalised by Newton–Schulz (NL §4 Eq. 43-44 and Eq. 52; SPEC §6.2, §5.5)."""

from __future__ import annotations

import math

import torch

from .common import (ParamwiseOptimizer, betas, boolean, fraction, matrix_shape, muon_switch, orthogonalise, positive,
                     positive_int, uses_muon)


def muon_scale(shape: torch.Size) -> float:
    """Moonlight's shape scaling ``0.2 · sqrt(max(rows, cols))`` of the matrix view: it gives the orthogonalised
    update (singular values ≈ 1, entry RMS ≈ ``1/sqrt(max(rows, cols))``) the RMS ≈ 0.2 of a typical AdamW update,
    so the matrix and the AdamW parameters share one learning rate and weight decay (Liu et al., 2025)."""
    rows, cols = matrix_shape(shape)
    return 0.2 * math.sqrt(max(rows, cols))


class Muon(ParamwiseOptimizer):
    """Muon (Jordan et al., 2024): NL Eq. 52 ``W ← W + σ(m(u))`` with a linear momentum ``m`` and ``σ`` =
    Newton–Schulz, the orthogonal map NL Eq. 43-44 learns.

    Matrix parameters (``ndim >= 2``, viewed as ``[shape[0], rest]``; or as the group's ``use_muon`` says)::

        B ← μ B + (1 − μ) g                       (momentum; Nesterov: B̃ = (1 − μ) g + μ B, else B̃ = B)
        W ← (1 − η λ) W − η · 0.2 · sqrt(max(rows, cols)) · NS_k(B̃)

    ``NS_k`` is the quintic Newton–Schulz of :func:`~nestedmemory.memory.maps.newton_schulz`, in fp32. The other
    parameters (biases, norm gains; embeddings and the LM head if their group sets ``use_muon=False``) take an
    AdamW update (``betas``, ``eps``, bias-corrected) in the same optimizer, as is common practice: Newton–Schulz of
    a vector only normalises it. Thanks to the shape scaling (:func:`muon_scale`) both parts use the same ``lr``
    and ``weight_decay``; the matrix rule equals ``torch.optim.Muon(adjust_lr_fn="match_rms_adamw")``, up to its
    bf16 Newton–Schulz.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 use_muon: bool | None = None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, use_muon=use_muon)
        super().__init__(params, defaults)

    @staticmethod
    def check(group: dict) -> None:
        fraction("momentum", group["momentum"])
        boolean("nesterov", group["nesterov"])
        positive_int("ns_steps", group["ns_steps"])
        betas("betas", group["betas"], 2)
        positive("eps", group["eps"])
        muon_switch("use_muon", group["use_muon"])

    def update(self, p: torch.Tensor, group: dict) -> None:
        if uses_muon(group, p):
            self._muon(p, group)
        else:
            self._adamw(p, group)

    def _muon(self, p: torch.Tensor, group: dict) -> None:
        state, momentum = self.state[p], group["momentum"]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"].lerp_(p.grad, 1 - momentum)
        update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
        p.add_(orthogonalise(update, group["ns_steps"]).to(p.dtype), alpha=-group["lr"] * muon_scale(p.shape))

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state, (beta1, beta2) = self.state[p], group["betas"]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        exp_avg = state["exp_avg"].lerp_(p.grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (exp_avg_sq / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1 ** state["step"]))
