"""The non-linear maps of the memory rules: Miras' retention maps and Atlas' Newton–Schulz orthogonalisation.

Both execution paths call these, so each equation lives here once. Every map acts per weight matrix
``[B, H, in, out]``; gates are ``[B, H, 1, 1]``.
"""

from __future__ import annotations

import torch

#: Muon's quintic Newton–Schulz coefficients (Jordan et al.; SPEC §5.5).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(s, steps: int):
    """``NS_k(S)``: ``k`` quintic Newton–Schulz iterations towards the polar factor of ``S`` (Atlas Eq. 32),
    after Frobenius normalisation; computed in at least fp32 (SPEC numerics), returned in ``s.dtype``."""
    dtype = torch.promote_types(s.dtype, torch.float32)
    x = s.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-1, -2)
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.transpose(-1, -2)
    return x.to(s.dtype)


def lq_norm(acc, q: float, eps: float):
    """Moneta's normaliser ``ν(A) = ‖A‖_q^{q−2}`` per matrix (Miras Eq. 25), ``‖A‖_q`` floored at ``eps``."""
    norm = acc.abs().pow(q).sum((-2, -1), keepdim=True).pow(1.0 / q)
    return norm.clamp_min(eps).pow(q - 2)


def soft_threshold(z, gamma: float):
    """``S_γ(z) = sign(z) max(|z| − γ, 0)`` (Miras Eq. 22)."""
    if gamma == 0:
        return z
    return torch.sign(z) * torch.relu(z.abs() - gamma)


def lag_step(retention: str, weights, grads, retain, lr, *, q: float, eps: float, shrink: float):
    """The exact single-token update of a lag token (the first token of a chunk) for the Miras retentions.

    ``weights`` is the state at the chunk boundary (Moneta: the accumulator ``A``) and ``grads`` the token's
    surprise ``∇ℓ`` at the memory ``W`` it defines. Returns ``(W_lag, norm)``:
    ``kl``: ``W_lag = softmax((1−α) log W − θ ∇ℓ)`` over the output axis (Miras Eq. 21/27);
    ``lq``: ``A_lag = (1−α) A − θ ∇ℓ``, ``W_lag = A_lag / ν(A_lag)`` (Eq. 24-25), ``norm = ν(A_lag)``;
    ``elastic``: ``W_lag = S_γ((1−α) W − θ ∇ℓ)`` (Eq. 22).
    """
    if retention == "kl":
        return [torch.softmax(retain * torch.log(w) - lr * g, dim=-1) for w, g in zip(weights, grads)], None
    if retention == "lq":
        acc = [retain * w - lr * g for w, g in zip(weights, grads)]
        norm = [lq_norm(a, q, eps) for a in acc]
        return [a / n for a, n in zip(acc, norm)], norm
    return [soft_threshold(retain * w - lr * g, shrink) for w, g in zip(weights, grads)], None


def memory_of(retention: str, weights, *, q: float, eps: float):
    """The memory a chunk-boundary state defines: ``A / ν(A)`` for ``lq``, the weights otherwise."""
    if retention == "lq":
        return [w / lq_norm(w, q, eps) for w in weights]
    return weights


def chunk_end(retention: str, weights, anchor, norm, lag_decay):
    """The state written at the end of a chunk of a lag rule, from the linear-phase weights ``W_b``:
    ``kl``: ``softmax(W_b + β (log W_lag − W_lag))``, i.e. the chunk's accumulated update applied in log space
    (``β`` the decay product since the lag token); ``lq``: the accumulator ``ν_lag W_b``; ``elastic``: ``W_b``."""
    if retention == "kl":
        return [torch.softmax(w + lag_decay * (torch.log(a) - a), dim=-1) for w, a in zip(weights, anchor)]
    if retention == "lq":
        return [w * n for w, n in zip(weights, norm)]
    return weights
