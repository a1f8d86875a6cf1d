"""The exponential feature map ``φ*`` (DeepTransformers / Dot, Atlas §4, Eq. 23-31) as an exact kernel memory.

``φ*(x) = [1, x, x^{⊗2}/√2!, …]`` has ``φ*(q)·φ*(k) = exp(q·k)``, so a matrix memory over ``φ*`` is
infinite-dimensional. Every write of a linear memory adds outer products ``φ*(k_i)ᵀ c_i``, hence
``W = Σ_n φ*(K_n)ᵀ C_n`` and the memory is non-parametric: the state is ``weights = [K [B, H, N, Dk], C [B, H, N, Dv]]``
(keys and coefficient rows) and a read is ``M(q) = φ*(q) W = exp(q Kᵀ) C`` (unnormalised attention over the stored
keys). A write of token ``i`` with gradient ``φ*(k_i)ᵀ δ_i`` appends the key ``k_i`` with a coefficient row;
retention scales the old rows. Keys and queries arrive here already scaled by ``√s`` (``memorize``'s
``feature_scale``), so every kernel below is ``exp(s q·k)`` and ``K`` holds the scaled keys.

``δ_i`` is the output gradient at the anchor ``A`` (the memory at the end of the previous chunk): ``−v_i`` (dot) or
``exp(k_i K_Aᵀ) C_A − v_i`` (ℓ2). ``gd``/``omega`` append ``−θ_t γ_{t,r} δ_{t−r}`` for every token of the window;
``dgd`` (``W_t = (a_t I − θ_t φ*(k_t)φ*(k_t)ᵀ) W_{t−1} − θ_t φ*(k_t)ᵀ δ_t``) appends ``−θ_t (M_{W_{t−1}}(k_t) + δ_t)``.
Both paths cost ``O(T²)`` like attention; the two store different ``(K, C)`` for the same memory function.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from . import chunked
from .chunked import _contract, _last, _rows


def read(memory, x):
    """``M(x) = exp(x Kᵀ) C`` for ``memory = [K, C]`` and queries ``x`` ``[B, H, T, Dk]``."""
    keys, coefs = memory
    return torch.exp(x @ keys.transpose(-1, -2)) @ coefs


def grad_at(rule, anchor, k, v):
    """``δ = ∂ℓ/∂M(k)`` at the anchor: ``−v`` (dot) or ``M_A(k) − v`` (ℓ2)."""
    return -v if rule.objective == "dot" else read(anchor, k) - v


def _append(memory, scale, keys, coefs):
    """``[K; keys], [scale · C; coefs]``: the memory ``scale · W + φ*(keys)ᵀ coefs``."""
    return [torch.cat([memory[0], keys], 2), torch.cat([scale * memory[1], coefs], 2)]


# ------------------------------------------------------------------------------------------ recurrent
def run_recurrent(rule, s, state):
    """The literal rule, token by token: one key per window token (gd/omega) or one key (dgd) appended per step."""
    memory, anchor, offset = list(state.weights), state.anchor, state.offset
    outs = []
    for j in range(s.q.shape[2]):
        pos = s.halo + j
        lr, retain = s.lr[:, :, j:j + 1], s.retain[:, :, j:j + 1]
        if offset == 0:
            anchor = memory
        if rule.learner == "dgd":
            k = s.k[:, :, pos:pos + 1]
            coefs = -lr * (read(memory, k) + grad_at(rule, anchor, k, s.v[:, :, pos:pos + 1]))
        else:
            index = [pos - r for r in range(rule.window) if pos - r >= 0]
            k = s.k[:, :, index]
            gamma = 1.0 if s.window is None else s.window[:, :, j, :len(index)].unsqueeze(-1)
            coefs = -lr * gamma * grad_at(rule, anchor, k, s.v[:, :, index])
        memory = _append(memory, retain, k, coefs)
        outs.append(read(memory, s.q[:, :, j:j + 1]))
        offset += 1
        if offset == rule.chunk_size:
            anchor, offset = None, 0
    out = torch.cat(outs, dim=2) if outs else s.q.new_zeros(*s.q.shape[:3], s.v.shape[-1])
    return out, replace(state, weights=memory, anchor=anchor, offset=offset)


# ------------------------------------------------------------------------------------------ chunked
def run_chunked(rule, s, state):
    """The chunk-parallel dual form: :func:`chunked.run` with the kernel's factors and segments."""
    return chunked.run(rule, s, state, factors_at=_factors, segments=_SEGMENTS)


def _factors(rule, anchor, tokens):
    """``[(X, Δ, keep)]``: the chunk's write keys, their ``δ`` at the anchor, and the slices of slots that are stream
    tokens (the grid's padding is never appended to the state; known from the grid, nothing read back)."""
    return [(tokens["k"], grad_at(rule, anchor, tokens["k"], tokens["v"]), tokens["slots"])]


def _kept(x, keep):
    """The slots ``keep`` (slices) of ``x`` ``[B, H, E, ·]``, in order."""
    return x[:, :, keep[0]] if len(keep) == 1 else torch.cat([x[:, :, part] for part in keep], 2)


def _gd_segment(rule, q, q_raw, memory, momentum, factors, coef):
    """``o_t = β_t M_{W_0}(q_t) + Σ_e G[t,e] exp(q_t·x_e) δ_e``; the chunk end appends ``X`` with ``G[last] ⊙ Δ``."""
    (x, delta, keep), = factors
    beta, g = coef["beta"], coef["G"]
    out = _rows(beta) * read(memory, q) + _contract(torch.exp(q @ x.transpose(-1, -2)), g, delta)
    rows = g[:, :, 0, -1].unsqueeze(-1) * delta
    return out, _append(memory, _last(beta), _kept(x, keep), _kept(rows, keep)), momentum


def _dgd_segment(rule, q, q_raw, memory, momentum, factors, coef):
    """``U_t = M_{W_{t−1}}(x_t) + δ_t`` solves ``(I + L ⊙ exp(X Xᵀ)) U = β_{t−1} M_{W_0}(X) + Δ`` (``chunked``'s DGD
    system in feature space); ``o_t = β_t M_{W_0}(q_t) − Σ_{i≤t} (β_t/β_i) θ_i exp(q_t·x_i) U_i``."""
    (x, delta, keep), = factors
    beta, d_theta = coef["beta"][:, :, 0], coef["Dtheta"][:, :, 0]
    system = coef["L"][:, :, 0] * torch.exp(x @ x.transpose(-1, -2))
    rhs = coef["beta_prev"][:, :, 0].unsqueeze(-1) * read(memory, x) + delta
    u = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    out = beta.unsqueeze(-1) * read(memory, q) - (torch.exp(q @ x.transpose(-1, -2)) * d_theta) @ u
    rows = -d_theta[..., -1, :].unsqueeze(-1) * u
    return out, _append(memory, beta[..., -1:, None], _kept(x, keep), _kept(rows, keep)), momentum


_SEGMENTS = {"gd": _gd_segment, "omega": _gd_segment, "dgd": _dgd_segment}
