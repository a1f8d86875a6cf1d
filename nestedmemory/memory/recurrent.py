"""The literal token-by-token path: the oracle for every fast path and the decoding step.

Each token: at a chunk boundary the gradient point ``A`` is frozen at the current memory (for the Miras
retentions the boundary token is a lag token, updated by the exact non-linear rule); the surprise
``u_t = Σ_r γ_{t,r} ∇ℓ(A; k_{t−r}, v_{t−r})`` is taken by autograd; the learner updates the weights as written in
:class:`~nestedmemory.memory.rule.MemoryRule`; the output is read after the write, ``o_t = M_{W_t}(q_t)``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from . import chunked
from .maps import chunk_end, dgd_scale, gradient_curvature, implicit_scale, lag_step, memory_of, newton_schulz
from .nets import explicit, forward, souped
from .objectives import loss


def run(rule, s, state, *, autograd: bool = True):
    """The rule token by token. ``autograd=False`` takes each surprise from the hand-derived gradient factors
    (:func:`factor_surprise`) instead of autograd: the direct one-token step ``memorize`` decodes with."""
    outer = torch.is_grad_enabled()
    grad = surprise if autograd else factor_surprise
    weights, momentum = list(state.weights), state.momentum
    anchor, lag_acc, lag_decay, offset = state.anchor, state.lag_acc, state.lag_decay, state.offset
    outs = []
    for j in range(s.q.shape[2]):
        pos = s.halo + j
        lr, retain = s.lr[:, :, j:j + 1], s.retain[:, :, j:j + 1]
        mom = None if s.momentum is None else s.momentum[:, :, j:j + 1]
        if offset == 0 and rule.is_lag:
            point = memory_of(rule, weights)
            grads, _ = grad(rule, s, point, [pos], None, outer)
            weights, lag_acc = lag_step(rule, weights, [dense(g) for g in grads], retain, lr)
            anchor, lag_decay = weights, torch.ones_like(retain)
        else:
            if offset == 0:
                anchor = weights
            index = [pos - r for r in range(rule.window) if pos - r >= 0]
            gamma = None if s.window is None else s.window[:, :, j, :len(index)]
            grads, inputs = grad(rule, s, anchor, index, gamma, outer)
            weights, momentum = learn(rule, weights, momentum, grads, inputs, lr, retain, mom)
            if lag_decay is not None:
                lag_decay = lag_decay * retain
        soup = None if s.soup is None else (s.soup[0][:, :, j:j + 1], s.soup[1][:, :, j:j + 1], s.soup[2])
        out, _ = forward(rule, s.q[:, :, j:j + 1], s.q_raw[:, :, j:j + 1], souped(explicit(weights), soup))
        outs.append(out)
        offset += 1
        if offset == rule.chunk_size:
            if rule.is_lag:
                weights = chunk_end(rule, weights, anchor, lag_acc, lag_decay)
            anchor = lag_acc = lag_decay = None
            offset = 0
    out = torch.cat(outs, dim=2) if outs else s.q.new_zeros(*s.q.shape[:3], s.v.shape[-1])
    return out, replace(state, weights=weights, momentum=momentum, anchor=anchor, lag_acc=lag_acc,
                        lag_decay=lag_decay, offset=offset)


def surprise(rule, s, point, index, gamma, outer):
    """``Σ_r γ_r ∇_W ℓ(point; k_i, v_i)`` over the stream positions ``index`` by autograd, with the layer inputs
    of the first of them (DGD's ``x_t``)."""
    with torch.enable_grad():
        params = [w if outer and w.requires_grad else w.detach().requires_grad_() for w in point]
        pred, cache = forward(rule, s.k[:, :, index], s.k_raw[:, :, index], explicit(params))
        per_token = loss(rule.objective, pred, s.v[:, :, index], p=rule.p, eps=rule.eps,
                         **s.token_kwargs(index))
        if gamma is not None:
            per_token = per_token * gamma
        if rule.implicit_step:  # one token (window 1): its gradient and ∂ℓ/∂M(k) by autograd, then ω/(1 + θρ)
            *grads, d_out = torch.autograd.grad(per_token.sum(), [*params, pred], create_graph=outer)
            rho = gradient_curvature(lambda n: sum((g / n).square().sum((-2, -1), keepdim=True) for g in grads),
                                     d_out)
            grads = [implicit_scale(rule, s.lr[:, :, index], rho) * g for g in grads]
        else:
            grads = torch.autograd.grad(per_token.sum(), params, create_graph=outer)
    inputs = [x[:, :, :1] for x in cache["inputs"]]
    if not outer:
        inputs = [x.detach() for x in inputs]
    return list(grads), inputs


def factor_surprise(rule, s, point, index, gamma, outer=None):
    """:func:`surprise` as the rank-one factors ``(h, δ)`` of ``∇_W ℓ = hᵀδ`` per weight (:func:`nets.write_factors`,
    the chunked path's gradients, no autograd; ``δ`` weighted by the window gates ``γ_r``, so ``∇ = Σ_r γ_r h_rᵀ δ_r``)
    and the first token's layer inputs; :func:`learn` forms each product inside its update (:func:`descend`)."""
    tokens = {"k": s.k[:, :, index], "k_raw": s.k_raw[:, :, index], "v": s.v[:, :, index], **s.token_kwargs(index)}
    if rule.implicit_step:  # window 1: no halo, so stream position = gate position
        tokens["lr"] = s.lr[:, :, index]
    factors = chunked.gradient_factors(rule, point, tokens)
    if gamma is not None:
        factors = [(x, gamma.unsqueeze(-1) * d) for x, d in factors]
    return factors, [x[:, :, :1] for x, _ in factors]


def dense(grad):
    """A surprise as a matrix: ``grad`` itself, or ``hᵀδ`` from factors."""
    return grad if isinstance(grad, torch.Tensor) else grad[0].transpose(-1, -2) @ grad[1]


def descend(start, grad, step):
    """``start − step · ∇`` (``step`` ``[B, H, 1, G]``; ``start`` a fresh product of the caller, which factors
    update in place): for factors ``(h, δ)`` one fused ``baddbmm_``, without forming ``∇ = hᵀδ`` or ``step · ∇``
    as matrices (a decoding step's memory traffic)."""
    if isinstance(grad, torch.Tensor):
        return start - step * grad
    x, d = grad
    shape = start.shape
    return start.view(-1, *shape[-2:]).baddbmm_(x.transpose(-1, -2).reshape(-1, shape[-2], x.shape[-2]),
                                                (step * d).reshape(-1, d.shape[-2], shape[-1]), alpha=-1).view(shape)


def learn(rule, weights, momentum, grads, inputs, lr, retain, mom):
    """One step of the memory learning algorithm (gates ``[B, H, 1, G]``; ``grads`` matrices or factors,
    :func:`descend`)."""
    if rule.learner == "momentum":
        momentum = [descend(mom * m, g, lr) for m, g in zip(momentum, grads)]
        return [torch.addcmul(m, retain, w) for w, m in zip(weights, momentum)], momentum
    if rule.learner == "muon":
        momentum = [descend(mom * m, g, 1.0) for m, g in zip(momentum, grads)]
        return [retain * w + lr * newton_schulz(m, rule.ns_steps) for w, m in zip(weights, momentum)], momentum
    if rule.is_dgd:
        scales = [dgd_scale(rule, lr, x, layer) for layer, x in enumerate(inputs)]
        steps = [lr if scale is None else lr * scale for scale in scales]
        new = [retain * w - step * (x.transpose(-1, -2) @ (x @ w)) for w, x, step in zip(weights, inputs, steps)]
        if rule.learner == "dgd":
            return [descend(w, g, step) for w, g, step in zip(new, grads, steps)], momentum
        momentum = [descend(mom * m, g, step) for m, g, step in zip(momentum, grads, steps)]
        return [w + m for w, m in zip(new, momentum)], momentum
    return [descend(retain * w, g, lr) for w, g in zip(weights, grads)], momentum
