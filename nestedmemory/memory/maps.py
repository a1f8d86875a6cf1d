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
    after Frobenius normalisation; computed in at least fp32 (SPEC numerics), returned in ``s.dtype``. Each step
    ``X ← aX + (bG + cG²)X``, ``G = XXᵀ`` on the smaller side (:class:`_QuinticSteps`)."""
    dtype = torch.promote_types(s.dtype, torch.float32)
    x = s.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-1, -2)
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    if steps:
        x = _QuinticSteps.apply(x.reshape(-1, *x.shape[-2:]), steps).reshape(x.shape)
    if tall:
        x = x.transpose(-1, -2)
    return x.to(s.dtype)


def _quintic_steps(x, steps: int, saved: list | None = None):
    """``steps`` iterations ``X ← aX + M X``, ``M = bG + cG²``, ``G = XXᵀ`` on ``[N, m, n]``, each two fused
    multiply-adds; every step's ``(X, G, M)`` appended to ``saved`` when given."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = torch.bmm(x, x.transpose(-1, -2))
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        if saved is not None:
            saved += [x, gram, poly]
        x = torch.baddbmm(x, poly, x, beta=a)
    return x


class _QuinticSteps(torch.autograd.Function):
    """:func:`_quintic_steps` (``m ≤ n``) with a backward that uses the symmetry of ``G`` and ``M``: autograd through
    the three products takes five ``m × m × n``-sized products per step, this one three and one ``m³``. With ``Ȳ``
    the step's output gradient,

        X̄ = aȲ + MȲ + (bS + c(SG + (SG)ᵀ)) X,   S = ȲXᵀ + XȲᵀ   (the symmetric part of M̄ = ȲXᵀ, doubled).

    A second derivative (``create_graph``) re-runs the steps under autograd instead."""

    @staticmethod
    def forward(ctx, x, steps: int):
        saved = []
        with torch.autocast(x.device.type, enabled=False):  # fp32 also inside an autocast region
            out = _quintic_steps(x, steps, saved)
        ctx.steps = steps
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):  # a backward called inside autocast stays fp32
            if torch.is_grad_enabled():  # differentiable backward: through autograd's graph of the steps
                x = saved[0]
                return torch.autograd.grad(_quintic_steps(x, ctx.steps), x, grad, create_graph=True)[0], None
            return _quintic_backward(saved, grad), None


def _quintic_backward(saved, grad):
    """:class:`_QuinticSteps`' backward from the steps' saved ``(X, G, M)``."""
    a, b, c = NS_COEFFS
    for i in range(len(saved) - 3, -1, -3):
        x, gram, poly = saved[i:i + 3]
        outer = torch.bmm(grad, x.transpose(-1, -2))
        sym = outer + outer.transpose(-1, -2)
        sg = torch.bmm(sym, gram)
        dgram = b * sym + c * (sg + sg.transpose(-1, -2))
        grad = torch.baddbmm(torch.baddbmm(grad, poly, grad, beta=a), dgram, x)
    return grad


def dgd_scale(rule, lr, x, layer: int):
    """``θ' / θ`` of DGD layer ``layer`` (``lr`` ``[..., N, G]``, the layer's inputs ``x`` ``[..., N, in]``), or
    ``None`` where the layer takes the plain step ``θ`` (no bound, not proximal: nothing to multiply).

    ``rule.inner_lr_max`` first bounds ``θ`` of the layers before the output layer (``θ ← min(θ, bound)``); with
    ``rule.proximal`` the step is then the implicit one, ``ω θ / (1 + θ ‖x‖²)`` (NL App. C, ``ω = rule.relaxation``),
    with which ``W ← (I − θ' xᵀx) W − θ' xᵀδ`` is the exact minimiser of ``⟨xᵀδ, W⟩ + ½‖xW‖² + ‖W − W_prev‖² / 2θ``
    (Sherman–Morrison). The norm is taken in ``lr``'s (≥ fp32) precision. Returned as a factor so that ``θ = 0``
    (padding) needs no division."""
    bounded = rule.inner_lr_max is not None and layer != rule.output_layer
    if not (bounded or rule.proximal):
        return None
    scale, theta = 1.0, lr
    if bounded:
        bound = rule.inner_lr_max
        scale = torch.where(lr > bound, bound / lr.clamp(min=bound), torch.ones_like(lr))
        theta = lr.clamp(max=bound)
    if rule.proximal:
        scale = scale * implicit_scale(rule, theta, x.to(lr.dtype).square().sum(-1, keepdim=True))
    return scale


def implicit_scale(rule, theta, curvature):
    """``θ' / θ = ω / (1 + θ ρ)``: the implicit (proximal) step of a step ``θ`` along a direction of curvature
    ``ρ`` (``ω`` = ``rule.relaxation``). For an ℓ2 linear layer ``ρ = ‖x‖²`` and this is the exact minimiser of the
    proximal objective (NL App. C; NLMS / Longhorn's step); :func:`gradient_curvature` gives ``ρ`` of a deep
    memory along its own gradient."""
    return rule.relaxation / (1 + theta * curvature)


#: below this output-gradient norm the curvature's Rayleigh quotient is not normalised further (no 0/0)
CURVATURE_EPS = 1e-12


def gradient_curvature(grad_sq, d_out):
    """``ρ = ‖∇_W ℓ‖² / ‖∂ℓ/∂M(k)‖²``: the Gauss–Newton curvature ``gᵀ J Jᵀ g / ‖g‖²`` of the memory's output
    along the loss gradient ``g = ∂ℓ/∂M(k)`` (``J = ∂M(k)/∂W``), i.e. how far a unit step along ``−Jᵀg`` moves the
    prediction per unit of ``g``. ``grad_sq(n)`` returns ``‖∇_W ℓ / n‖²`` summed over the weights for the
    per-token norm ``n = max(‖g‖, ε)`` (``[..., 1]``), so that ``ρ`` is formed without dividing by a square that
    could underflow. For a linear memory without a norm ``ρ = ‖k‖²``."""
    return grad_sq(torch.linalg.vector_norm(d_out, dim=-1, keepdim=True).clamp_min(CURVATURE_EPS))


def lq_link(acc, q: float, eps: float):
    """Moneta's map from the accumulator to the memory, ``W = sign(A) |A|^{q−1} / ‖A‖_q^{q−2}`` per matrix
    (Miras Eq. 25 with the element-wise power of the L_q link restored, see docs/decisions.md): homogeneous of degree
    1 (``‖W‖_{q/(q−1)} = ‖A‖_q``), the identity at q = 2; ``‖A‖_q`` is floored at ``eps``."""
    if q == 2:
        return acc
    norm = acc.abs().pow(q).sum((-2, -1), keepdim=True).pow(1.0 / q).clamp_min(eps)
    return torch.sign(acc) * acc.abs().pow(q - 1) / norm.pow(q - 2)


def lq_link_inverse(w, q: float, eps: float):
    """The accumulator of a memory: ``A = sign(W) |W|^{p−1} / ‖W‖_p^{p−2}`` with ``p = q/(q−1)`` (the dual link),
    so that ``lq_link(lq_link_inverse(W)) = W``."""
    if q == 2:
        return w
    p = q / (q - 1)
    norm = w.abs().pow(p).sum((-2, -1), keepdim=True).pow(1.0 / p).clamp_min(eps)
    return torch.sign(w) * w.abs().pow(p - 1) / norm.pow(p - 2)


def soft_threshold(z, gamma: float):
    """``S_γ(z) = sign(z) max(|z| − γ, 0)`` (Miras Eq. 22)."""
    if gamma == 0:
        return z
    return torch.sign(z) * torch.relu(z.abs() - gamma)


def simplex(rule, z):
    """Memora's memory from its logits: ``c · softmax(Z)`` over the output axis, rows summing to
    ``c = rule.simplex_scale`` (Miras Eq. 18-21's scaled simplex), by default the row's width ``n``."""
    return (z.shape[-1] if rule.simplex_scale is None else rule.simplex_scale) * torch.softmax(z, dim=-1)


def lag_step(rule, weights, grads, retain, lr):
    """The exact single-token update of a lag token (the first token of a chunk) for the Miras retentions.

    ``weights`` is the state at the chunk boundary (Moneta: the accumulator ``A``; Memora: the logits ``Z``) and
    ``grads`` the token's surprise ``∇ℓ`` at the memory ``W`` it defines (:func:`memory_of`). Returns
    ``(W_lag, A_lag)``:
    ``kl``: ``A_lag = (1−α) log W − θ ∇ℓ``, ``W_lag = c · softmax(A_lag)`` over the output axis (Miras
    Eq. 21/27), with ``log W = log_softmax(Z)`` (up to ``log c``, a constant per row, which the softmax ignores;
    never the log of a saturated softmax, see :func:`memory_of`);
    ``lq``: ``A_lag = (1−α) A − θ ∇ℓ``, ``W_lag = link(A_lag)`` (Eq. 24-25);
    ``elastic``: ``W_lag = S_γ((1−α) W − θ ∇ℓ)`` (Eq. 22). ``A_lag`` is ``None`` for ``elastic``.
    """
    if rule.retention == "kl":
        acc = [retain * torch.log_softmax(z, dim=-1) - lr * g for z, g in zip(weights, grads)]
        return [simplex(rule, a) for a in acc], acc
    if rule.retention == "lq":
        acc = [retain * w - lr * g for w, g in zip(weights, grads)]
        return [lq_link(a, rule.q, rule.eps) for a in acc], acc
    return [soft_threshold(retain * w - lr * g, rule.shrink) for w, g in zip(weights, grads)], None


def memory_of(rule, weights):
    """The memory a chunk-boundary state defines: ``link(A)`` for ``lq``, ``c · softmax(Z)`` for ``kl``
    (:func:`simplex`), the weights otherwise. Memora's state is kept as logits because its retention acts on
    ``log W``: a softmax row whose entries underflow to 0 (they do, once a row saturates: a repeated token pushes the
    same logits every chunk) has ``log W = −inf``, and the backward of ``log`` then multiplies 0 by ``1/W = inf``."""
    if rule.retention == "lq":
        return [lq_link(w, rule.q, rule.eps) for w in weights]
    if rule.retention == "kl":
        return [simplex(rule, z) for z in weights]
    return weights


def chunk_end(rule, weights, anchor, lag_acc, lag_decay):
    """The state written at the end of a chunk of a lag rule, from the linear-phase weights ``W_b`` (the chunk's
    updates applied to ``W_lag`` as plain decayed GD, "inside a chunk treat q = 2"): the same updates applied in the
    map's own space, ``β`` being the decay product since the lag token — the accumulator ``W_b + β (A_lag − W_lag)``
    for ``lq`` and for ``kl`` (there the logits ``β A_lag − Σ_i (β/β_i) θ_i ∇ℓ(W_lag; k_i, v_i)``, the
    softmax of which is ``softmax(W_b + β (log W_lag − W_lag))``: ``A_lag`` and ``log W_lag`` differ by a constant per
    row); ``elastic``: ``W_b``."""
    if rule.retention in ("lq", "kl"):
        return [w + lag_decay * (acc - a) for w, acc, a in zip(weights, lag_acc, anchor)]
    return weights
