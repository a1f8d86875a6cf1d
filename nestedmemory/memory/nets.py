"""Memory architectures (SPEC §2.3, §10.1) with the weight products supplied by the caller.

Every memory weight ``W_l`` acts on row vectors, ``z = h @ W_l``, so the gradient of a per-token loss with
respect to ``W_l`` is the outer product ``h_lᵀ δ_l`` of the layer's input and the loss gradient at its output.
:func:`forward` takes a callable ``mm(l, h)`` that computes ``h @ W_l``: explicit weights for the gradient point,
or the chunk's dual form for reads (``chunked.py``). :func:`write_factors` returns the ``(h_l, δ_l)`` pairs at
explicit weights, by a hand-derived backward pass (no autograd inside, so outer gradients flow through it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .rule import MemoryRule

LN_EPS = 1e-5


def activation(name: str, z):
    """The memory's activation ``σ(z)`` (exact GELU, SiLU, ReLU, tanh; identity otherwise), one fused op each."""
    if name == "gelu":
        return F.gelu(z)
    if name == "silu":
        return F.silu(z)
    if name == "relu":
        return torch.relu(z)
    if name == "tanh":
        return torch.tanh(z)
    return z


def activation_backward(name: str, grad, z):
    """``grad ⊙ σ'(z)``, differentiable in ``grad`` and ``z`` (the write factors' δ carry outer gradients through
    it); GELU's is aten's fused ``gelu_backward``, which has a double backward."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, z)
    if name == "silu":  # aten's silu_backward has no derivative of its own
        s = torch.sigmoid(z)
        return grad * s * (1 + z * (1 - s))
    if name == "relu":
        return grad * (z > 0).to(grad.dtype)
    if name == "tanh":
        return grad * (1 - torch.tanh(z) ** 2)
    return grad


def poly_features(x, degree: int, coeffs):
    """Atlas' polynomial map ``φ_p(x) = concat_{i=0..p} sqrt(a_i) x^{⊗i}`` (Eq. 5, 22), so that
    ``φ(q)·φ(k) = Σ_i a_i (q·k)^i``. ``x``: ``[B, H, N, D]``; ``coeffs``: ``[p+1]`` or ``[H, p+1]``, ``a_i ≥ 0``."""
    coeffs = coeffs if coeffs.dim() == 2 else coeffs.unsqueeze(0)
    scale = torch.sqrt(coeffs).to(x.dtype)                      # [H or 1, p+1]
    term = torch.ones_like(x[..., :1])
    parts = []
    for i in range(degree + 1):
        if i > 0:
            term = (term.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
        parts.append(term * scale[:, i].view(1, -1, 1, 1))
    return torch.cat(parts, dim=-1)


def default_poly_coeffs(degree: int, dtype=torch.float32, device=None):
    """``a_i = 1 / i!``: the Taylor coefficients of ``exp`` (Atlas Eq. 5 initialisation)."""
    return torch.tensor([1.0 / math.factorial(i) for i in range(degree + 1)], dtype=dtype, device=device)


def forward(rule: MemoryRule, x, raw, mm):
    """``M(x)`` with products ``mm(l, h) = h @ W_l``; ``x`` feeds the first layer, ``raw`` the residual.
    Returns ``(output, cache)``; the cache is what :func:`write_factors` needs."""
    if rule.memory == "linear" or rule.depth == 1:
        inputs, pres, branch = [x], [], mm(0, x)
    elif rule.gated:
        z1, z3 = mm(0, x), mm(2, x)
        h = activation(rule.activation, z1) * z3
        inputs, pres, branch = [x, h, x], [z1, z3], mm(1, h)
    else:
        inputs, pres, h = [x], [], x
        for layer in range(rule.depth - 1):
            z = mm(layer, h)
            h = activation(rule.activation, z)
            pres.append(z)
            inputs.append(h)
        branch = mm(rule.depth - 1, h)
    cache = {"inputs": inputs, "pres": pres}
    if rule.layernorm:
        mu = branch.mean(-1, keepdim=True)
        rstd = torch.rsqrt(branch.var(-1, unbiased=False, keepdim=True) + LN_EPS)
        branch = (branch - mu) * rstd
        cache.update(normed=branch, rstd=rstd)
    if rule.memory == "mlp" and rule.residual:
        return raw + branch, cache
    return branch, cache


def write_factors(rule: MemoryRule, cache, d_out, weights):
    """``[(h_l, δ_l)]`` per weight so that ``∂ℓ/∂W_l = h_lᵀ δ_l`` token-wise, given ``d_out = ∂ℓ/∂M(x)`` and
    the explicit ``weights`` the cache was computed with."""
    d = d_out
    if rule.layernorm:
        y, rstd = cache["normed"], cache["rstd"]
        d = rstd * (d - d.mean(-1, keepdim=True) - y * (d * y).mean(-1, keepdim=True))
    inputs, pres = cache["inputs"], cache["pres"]
    if rule.memory == "linear" or rule.depth == 1:
        return [(inputs[0], d)]
    if rule.gated:
        z1, z3 = pres
        dh = d @ weights[1].transpose(-1, -2)
        d_z3 = dh * activation(rule.activation, z1)
        d_z1 = activation_backward(rule.activation, dh * z3, z1)
        return [(inputs[0], d_z1), (inputs[1], d), (inputs[2], d_z3)]
    factors = [None] * rule.depth
    factors[-1] = (inputs[-1], d)
    for layer in range(rule.depth - 2, -1, -1):
        d = activation_backward(rule.activation, d @ weights[layer + 1].transpose(-1, -2), pres[layer])
        factors[layer] = (inputs[layer], d)
    return factors


def souped(mm, soup):
    """``mm`` of Memory Soup's per-token memory ``θ*_t = γ_t W_t + Σ_n γ_{t,n} W^{(n)}`` (MC Eq. 14–15; a layer's
    output is linear in its weights, so ``h θ*_t = γ_t (h W_t) + Σ_n γ_{t,n} (h W^{(n)})``), or ``mm`` itself when
    ``soup`` is ``None``. ``soup = (γ [B, H, C, 1], γ_n [B, H, C, N], cached)``, ``cached`` one
    ``[N, B, H, in, out]`` per layer; ``mm`` the products with the online weights ``W_t``."""
    if soup is None:
        return mm
    gamma, gammas, cached = soup
    gammas = gammas.movedim(-1, 0).unsqueeze(-1)
    return lambda layer, h: gamma * mm(layer, h) + (gammas * (h @ cached[layer])).sum(0)


def explicit(weights):
    """``mm`` for explicit weights ``[B, H, in, out]`` and inputs ``[B, H, N, in]``."""
    return lambda layer, h: h @ weights[layer]
