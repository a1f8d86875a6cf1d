"""The chunk-parallel path (SPEC §2.2): one memory forward/backward per chunk at the frozen gradient point, the
linear recurrences inside the chunk as coefficient matrices (the dual form).

Within a chunk every memory weight evolves as ``W_t = β_t W_0 + f_t S_0 + Σ_i G_{t,i} h_iᵀ δ_i`` where
``(h_i, δ_i)`` are the rank-one gradient factors of the write tokens (``nets.write_factors``) and ``β, f, G``
depend only on the gates: ``β_t = Π_{l≤t}(1−α_l)``; for ``gd``, ``G = −D_β diag(θ) Γ``; for ``momentum``,
``G = −D_β D_η diag(θ) Γ`` and ``f = D_β m`` with ``m_t = Π_{l≤t} η_l`` (SPEC §2.2), where
``D_x[t, j] = Π_{j<l≤t} x_l`` and ``Γ`` places the Omega window gates. A read ``h W_t`` is then
``β_t (h W_0) + f_t (h S_0) + Σ_i G_{t,i} (h·h_i) δ_i``: per-token weights are never formed. DGD solves the
chunk's unit-triangular system (WY/UT form); Muon forms the per-token momenta to orthogonalise them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .maps import chunk_end, dgd_scale, gradient_curvature, implicit_scale, lag_step, memory_of, newton_schulz
from .nets import explicit, forward, souped, write_factors
from .objectives import output_grad


def segsum(x):
    """``out[..., t, j] = Σ_{j<l≤t} x[..., l]`` for ``j ≤ t`` and ``−inf`` above the diagonal: differences of
    prefix sums taken in fp64, so exact to ``x``'s rounding whatever the prefix sums' size (for ``x ≤ 0``, the
    log-decays; entries below ``SEGSUM_FLOOR``, decays of ``e^−10⁴`` that are zero in every float format, count as
    the floor, so that ``−inf`` stays finite in the prefix sums). Apple's MPS has no fp64: there they are fp32."""
    return _SegSum.apply(x)


class _SegSum(torch.autograd.Function):
    """:func:`segsum` with its backward in ``x``'s dtype: ``∂/∂s_t = Σ_j g[t, j] − Σ_i g[i, t]`` over the lower
    triangle (the prefix sums ``s`` enter row ``t`` with ``+`` and column ``t`` with ``−``), then the prefix sum's
    adjoint, a reverse cumulative sum; two reductions of the ``[C, C]`` gradient instead of autograd's fp64 casts."""

    @staticmethod
    def forward(ctx, x):
        c = x.shape[-1]
        wide = torch.float32 if x.device.type == "mps" else torch.float64
        sums = x.clamp_min(SEGSUM_FLOOR).to(wide).cumsum(-1)
        upper = torch.ones(c, c, dtype=torch.bool, device=x.device).triu(1)
        ctx.save_for_backward(x, upper)
        return (sums.unsqueeze(-1) - sums.unsqueeze(-2)).to(x.dtype).masked_fill(upper, -math.inf)

    @staticmethod
    def backward(ctx, grad):
        x, upper = ctx.saved_tensors
        grad = grad.masked_fill(upper, 0)
        d_sums = grad.sum(-1) - grad.sum(-2)
        return d_sums.flip(-1).cumsum(-1).flip(-1) * (x >= SEGSUM_FLOOR)


#: the smallest log-decay :func:`segsum` distinguishes (``e^−10⁴`` is zero in fp64 already)
SEGSUM_FLOOR = -1e4


def _log(gate):
    return torch.log(gate.clamp_min(torch.finfo(gate.dtype).tiny))


def run(rule, s, state, *, factors_at=None, segments=None):
    """Outputs and final state over the chunk grid. ``factors_at(rule, point, tokens)`` (the write tokens' gradient
    factors at the chunk's gradient point) and ``segments`` (learner -> dual-form segment) default to the
    parametric memories'; ``kernel.py`` passes the exponential kernel memory's."""
    factors_at, segments = factors_at or gradient_factors, segments or _SEGMENTS
    b, h, t_len, _ = s.q.shape
    if t_len == 0:
        return s.q.new_zeros(b, h, 0, s.v.shape[-1]), state
    c, off = rule.chunk_size, state.offset
    n_chunks = -(-(off + t_len) // c)
    back = n_chunks * c - off - t_len
    # tokens within one chunk (decoding, prefill pieces) run as a chunk of their own length: the grid's padding
    # (zero lr, unit retain and momentum, inactive) is a no-op, so it is left out rather than computed
    width, front, tail = (t_len, 0, 0) if n_chunks == 1 and rule.window == 1 else (c, off, back)

    def grid(x, value=0.0):
        """Tokens on the chunk grid ``[B, H, N, width, ...]`` (``front`` pads in front, ``tail`` behind)."""
        if x is None:
            return None
        if front or tail:
            x = F.pad(x, [0, 0] * (x.dim() - 3) + [front, tail], value=value)
        return x.unflatten(2, (n_chunks, width))

    lag = [rule.is_lag and not (n == 0 and off > 0) for n in range(n_chunks)]
    lr, retain = grid(s.lr), grid(s.retain, 1.0)
    lr_in, retain_in = lr, retain  # the gates the coefficients see: without the lag tokens', done by ``lag_step``
    if any(lag):
        keep = torch.ones(n_chunks, width, 1, dtype=lr.dtype, device=lr.device)
        keep[lag.index(True):, 0] = 0  # every chunk from the first lag one (all but a resumed chunk 0): no H2D copy
        lr_in, retain_in = lr * keep, 1 - (1 - retain) * keep
    gamma = _window(rule, s, off, c, n_chunks)
    active = grid(torch.ones_like(s.lr[..., :1])) if front or tail else None  # None: no grid padding
    coef = _coefficients(rule, lr_in, retain_in, grid(s.momentum, 1.0), gamma, active)
    # one unbind per tensor: indexing chunk n out of the whole grid would make the backward quadratic in T
    chunks = lambda x: x.unbind(2)  # noqa: E731
    writes = {name: chunks(x) for name, x in _write_tokens(rule, s, off, c, n_chunks, grid).items()}
    coef = {name: chunks(x) for name, x in coef.items()}
    q, q_raw, lr, retain = chunks(grid(s.q)), chunks(grid(s.q_raw)), chunks(lr), chunks(retain)
    soup = None if s.soup is None else (chunks(grid(s.soup[0])), chunks(grid(s.soup[1])))

    weights, momentum = list(state.weights), state.momentum
    anchor, lag_acc, lag_decay = state.anchor, state.lag_acc, state.lag_decay
    recompute = rule.learner == "muon" and torch.is_grad_enabled() and \
        _muon_stored_bytes(rule, s, weights, n_chunks) > MUON_STORED_BYTES
    outs = []
    for n in range(n_chunks):
        if lag[n]:
            point = memory_of(rule, weights)
            first = {name: x[n][:, :, :1] for name, x in writes.items()}
            grads = [x.transpose(-1, -2) @ d for x, d in gradient_factors(rule, point, first)]
            weights, lag_acc = lag_step(rule, weights, grads, retain[n][:, :, :1], lr[n][:, :, :1])
            anchor, lag_decay = weights, 1.0
        elif not (n == 0 and off > 0):
            anchor = weights
        tokens = {name: x[n] for name, x in writes.items()}
        # the chunk's stream slots, known from the grid (it pads before chunk 0, after the last): read nothing back
        tokens["slots"] = (slice(front if n == 0 else 0, width - tail if n == n_chunks - 1 else width),) \
            if rule.window == 1 else _ext_slots(rule.window - 1, s.halo, t_len, off, c, n)
        factors = factors_at(rule, anchor, tokens)
        chunk_coef = {name: x[n] for name, x in coef.items()}
        if soup is not None:
            chunk_coef["soup"] = (soup[0][n], soup[1][n], s.soup[2])
        if recompute:
            chunk_coef["checkpoint"] = True
        out, weights, momentum = segments[rule.learner](rule, q[n], q_raw[n], weights, momentum,
                                                        factors, chunk_coef)
        outs.append(out)
        if lag_decay is not None:
            lag_decay = lag_decay * _last(chunk_coef["beta"])
        if n < n_chunks - 1 or back == 0:
            if rule.is_lag:
                weights = chunk_end(rule, weights, anchor, lag_acc, lag_decay)
            anchor = lag_acc = lag_decay = None
    out = torch.cat(outs, dim=2)[:, :, front:front + t_len]
    return out, replace(state, weights=weights, momentum=momentum, anchor=anchor, lag_acc=lag_acc,
                        lag_decay=lag_decay, offset=(off + t_len) % c)


def gradient_factors(rule, point, tokens):
    """Gradient factors ``[(h_l, δ_l)]`` of the write tokens at the explicit weights ``point``; with
    ``rule.implicit_step`` each token's ``δ_l`` carry its implicit-step scale ``ω / (1 + θ_t ρ_t)``
    (:func:`maps.implicit_scale`, ``ρ_t`` the curvature along its own gradient, ``θ_t`` = ``tokens["lr"]``)."""
    pred, cache = forward(rule, tokens["k"], tokens["k_raw"], explicit(point))
    d_out = output_grad(rule.objective, pred, tokens["v"], p=rule.p, eps=rule.eps,
                        threshold=tokens.get("threshold"), shift=tokens.get("shift"))
    factors = write_factors(rule, cache, d_out, point)
    if not rule.implicit_step:
        return factors
    rho = gradient_curvature(lambda n: sum(x.square().sum(-1, keepdim=True) * (d / n).square().sum(-1, keepdim=True)
                                           for x, d in factors), d_out)
    scale = implicit_scale(rule, tokens["lr"], rho)
    return [(x, scale * d) for x, d in factors]


# ------------------------------------------------------------------------------------------ write tokens
def _write_tokens(rule, s, off, c, n_chunks, grid):
    """Per chunk, the tokens whose gradients it uses: the chunk itself, preceded by ``window − 1`` halo tokens
    (:func:`run` adds which of a chunk's slots are stream tokens, :func:`_ext_slots`)."""
    names = {"k": s.k, "k_raw": s.k_raw, "v": s.v, "threshold": s.threshold, "shift": s.shift,
             "lr": s.lr if rule.implicit_step else None}
    if rule.window == 1:
        return {name: grid(x) for name, x in names.items() if x is not None}
    pos, _ = _ext_positions(rule.window - 1, s.halo, s.k.shape[2], off, c, n_chunks, s.k.device)
    index = pos.clamp(0, s.k.shape[2] - 1)
    return {name: x[:, :, index] for name, x in names.items() if x is not None}


def _ext_positions(w, halo, length, off, c, n_chunks, device):
    """Stream positions ``[N, w + C]`` of each chunk's extended write tokens, and the first real position."""
    n = torch.arange(n_chunks, device=device).unsqueeze(1)
    e = torch.arange(w + c, device=device).unsqueeze(0)
    first = halo + (n * c - off).clamp_min(0)
    real = n * c + (e - w) - off
    pos = torch.where(e < w, first - (w - e), halo + real)
    valid = (pos >= 0) & (pos < length) & ((e < w) | (real >= 0))
    return torch.where(valid, pos, -1), first.squeeze(1)


def _ext_slots(w, halo, t_len, off, c, n):
    """The slots of chunk ``n``'s extended write tokens that hold stream tokens (those :func:`_ext_positions` does
    not mark −1), as slices from Python integers: ``w`` halo slots from the first stream position
    ``halo + max(n c − off, 0)`` back, then the chunk's own tokens of this call."""
    first = halo + max(n * c - off, 0)
    behind = slice(max(0, w - first), w)
    own = slice(w + max(0, off - n * c), w + min(c, t_len + off - n * c))
    return (slice(behind.start, own.stop),) if own.start == w else (behind, own)


def _window(rule, s, off, c, n_chunks):
    """``Γ [B, H, N, 1, C, w + C]``: ``Γ[n, t, e] = γ_{t,r}`` where ext slot ``e`` holds token ``t − r``."""
    if rule.window == 1:
        return None
    w, t_len = rule.window - 1, s.q.shape[2]
    device = s.q.device
    _, first = _ext_positions(w, s.halo, s.k.shape[2], off, c, n_chunks, device)
    # the (token j, lag r) pairs whose source j − r is in the stream (r ≤ halo + j), built from integers: a mask
    # here would be a nonzero read back from the device
    js = [torch.arange(min(max(0, r - s.halo), t_len), t_len, device=device) for r in range(rule.window)]
    j = torch.cat(js)
    r = torch.cat([torch.full_like(x, lag) for lag, x in enumerate(js)])
    n, t = (off + j) // c, (off + j) % c
    src = s.halo + j - r
    f = first[n]
    e = torch.where(src >= f, w + (src - s.halo + off) - n * c, w - (f - src))
    b, h = s.q.shape[:2]
    gamma = s.q.new_zeros(b, h, n_chunks, c, w + c)
    gamma[:, :, n, t, e] = s.window[:, :, j, r]
    return gamma.unsqueeze(3)


# ------------------------------------------------------------------------------------------ coefficients
def _coefficients(rule, lr, retain, momentum, gamma, active):
    """Gate-only coefficients for every chunk, laid out ``[B, H, N, G, C(, C or E)]``. ``active`` is 0 on the
    padding tokens of the chunk grid, where momentum must not be added to the weights (``None``: no padding)."""
    move = lambda x: x.movedim(-1, -2)  # noqa: E731  [B,H,N,C,G] -> [B,H,N,G,C]
    theta, log_a = move(lr), move(_log(retain))
    seg = segsum(log_a)
    decay = torch.exp(seg)                                   # D_β
    coef = {"beta": torch.exp(log_a.cumsum(-1))}
    window = (lambda x: x) if gamma is None else (lambda x: x @ gamma)  # noqa: E731
    if rule.learner in ("gd", "omega"):
        coef["G"] = window(-decay * theta.unsqueeze(-2))
    elif rule.learner == "momentum":
        log_m = move(_log(momentum))
        carry = torch.exp(segsum(log_m)) * -theta.unsqueeze(-2)  # −D_η diag(θ)
        m = torch.exp(log_m.cumsum(-1))
        if active is not None:
            decay = decay * move(active).unsqueeze(-2)           # W_t = a_t W_{t-1} + [active_t] S_t
        coef.update(G=window(decay @ carry), f=(decay * m.unsqueeze(-2)).sum(-1),
                    Gs=window(carry[..., -1:, :]).squeeze(-2), m=m)
    elif rule.learner == "muon":
        log_m = move(_log(momentum))
        coef.update(P=window(torch.exp(segsum(log_m))), m=torch.exp(log_m.cumsum(-1)),
                    Dtheta=decay * theta.unsqueeze(-2))
    else:  # dgd: β_{t-1}/β_i θ_i for the strictly lower triangle, and β_{t-1}
        prev = torch.exp(seg - log_a.unsqueeze(-1)).tril(-1)
        coef.update(Dtheta=decay * theta.unsqueeze(-2), theta=theta, L=prev * theta.unsqueeze(-2),
                    beta_prev=torch.exp(log_a.cumsum(-1) - log_a))
        if rule.learner == "dgd-momentum":  # S_i = m_i S_0 − Σ_j P[i,j] θ_j h_jᵀδ_j enters W_t for active i
            log_m = move(_log(momentum))
            on = None if active is None else move(active).unsqueeze(-2)
            coef.update(Ptheta=torch.exp(segsum(log_m)) * theta.unsqueeze(-2), m=torch.exp(log_m.cumsum(-1)),
                        Dactive=decay if on is None else decay * on, Lactive=prev if on is None else prev * on)
    return coef


def _rows(x):
    """``[B, H, G, C]`` -> ``[B, H, C, G]`` (broadcasts against ``[B, H, C, out]``)."""
    return x.transpose(-1, -2)


def _last(x):
    """The coefficient of the chunk's last token, ``[B, H, G, C]`` -> ``[B, H, 1, G]``."""
    return x[..., -1].unsqueeze(-2)


def _contract(a, g, delta):
    """``Σ_i a[t,i] G[t,i] δ_i`` for scalar (``G`` ``[B,H,1,C,E]``) or channel-wise (``[B,H,D,C,E]``) gates."""
    if g.shape[2] == 1:
        return (a * g[:, :, 0]) @ delta
    return torch.einsum("bhte,bhgte,bheg->bhtg", a, g, delta)


def _plus_product(acc, a, b, sign=1):
    """``acc ± a @ b``, one BLAS call that accumulates into the sum where the batch axes agree (no separate add)."""
    if acc.dim() > 2 and acc.shape[:-2] == a.shape[:-2] == b.shape[:-2]:
        return torch.baddbmm(acc.flatten(0, -3), a.flatten(0, -3), b.flatten(0, -3), alpha=sign).view(acc.shape)
    return acc + a @ b if sign == 1 else acc - a @ b


def _plus_scaled(acc, rows, r, w):
    """``acc + diag(rows) (r @ w)`` (``acc`` may be ``None``): a scalar per row scales ``r`` or the product,
    whichever is narrower, and the product then accumulates in BLAS."""
    if rows.shape[-1] == 1 and r.shape[-1] < w.shape[-1]:
        return (rows * r) @ w if acc is None else _plus_product(acc, rows * r, w)
    return rows * (r @ w) if acc is None else torch.addcmul(acc, rows, r @ w)


def _plus_end(acc, g_last, x, delta):
    """``acc + Σ_i h_iᵀ (g_i δ_i)`` with ``g_last`` ``[B, H, G, E]``."""
    return _plus_product(acc, x.transpose(-1, -2), g_last.transpose(-1, -2) * delta)


# ------------------------------------------------------------------------------------------ segments
def _linear_segment(rule, q, q_raw, weights, momentum, factors, coef):
    """``gd`` / ``omega`` / ``momentum``: dual-form reads and the chunk-end state."""
    beta, g = coef["beta"], coef["G"]
    f = coef.get("f")

    def mm(layer, r):
        x, delta = factors[layer]
        z = _plus_scaled(None, _rows(beta), r, weights[layer])
        if f is not None:
            z = _plus_scaled(z, _rows(f), r, momentum[layer])
        scores = r @ x.transpose(-1, -2)
        if g.shape[2] == 1:
            return _plus_product(z, scores * g[:, :, 0], delta)
        return z + _contract(scores, g, delta)

    out, _ = forward(rule, q, q_raw, souped(mm, coef.get("soup")))
    new_w = []
    for layer, (x, delta) in enumerate(factors):
        w = _last(beta) * weights[layer]
        if f is not None:
            w = torch.addcmul(w, _last(f), momentum[layer])
        new_w.append(_plus_end(w, g[..., -1, :], x, delta))
    if f is not None:
        momentum = [_plus_end(_last(coef["m"]) * m, coef["Gs"], x, delta) for m, (x, delta) in zip(momentum, factors)]
    return out, new_w, momentum


def _dgd_segment(rule, q, q_raw, weights, momentum, factors, coef):
    """DGD: ``U_t = h_t W_{t−1} + δ_t`` solves ``(I + L) U = β_{t−1} (H W_0) + Δ`` with
    ``L[t,i] = (β_{t−1}/β_i) θ_i (h_t·h_i)`` (i < t); then ``W_t = β_t W_0 − Σ_{i≤t} (β_t/β_i) θ_i h_iᵀ U_i``.
    Each layer's ``θ_i`` is its own step (``maps.dgd_scale``: the inner layers' bound, the implicit step
    ``ω θ_i / (1 + θ_i ‖h_i‖²)``): the columns of ``L`` and ``D_θ`` are scaled by ``θ'_i / θ_i``.

    ``dgd-momentum`` (``W_t = (a_t I − θ_t h_tᵀh_t) W_{t−1} + S_t``, ``S_t = η_t S_{t−1} − θ_t h_tᵀδ_t``):
    ``U_t = h_t W_{t−1}`` (δ enters through ``S``) solves
    ``(I + L ⊙ HHᵀ) U = β_{t−1} (H W_0) + (D'm) ⊙ (H S_0) − (D'PΘ ⊙ HHᵀ) Δ`` and
    ``W_t = β_t W_0 + (Dm)_t S_0 − Σ_i (DPΘ)[t,i] h_iᵀδ_i − Σ_i (DΘ)[t,i] h_iᵀ U_i``, with ``D`` / ``D'`` the
    inclusive / strict decay products ``β_t/β_i``, ``β_{t−1}/β_i`` (zero on padding columns), ``P[i,j] =
    Π_{j<l≤i} η_l``, ``m_i = Π_{l≤i} η_l``, ``Θ = diag(θ)``."""
    beta, beta_prev = coef["beta"][:, :, 0], coef["beta_prev"][:, :, 0].unsqueeze(-1)
    with_momentum = rule.learner == "dgd-momentum"
    if with_momentum:
        d_m, prev_m = (coef[name][:, :, 0] @ coef["m"][:, :, 0].unsqueeze(-1) for name in ("Dactive", "Lactive"))
    per_layer = []
    for index, ((x, delta), w, s0) in enumerate(zip(factors, weights, momentum or [None] * len(factors))):
        scale = dgd_scale(rule, _rows(coef["theta"][:, :, 0:1]), x, index)
        column = None if scale is None else scale.transpose(-1, -2)

        def scaled(m, column=column):  # the columns of a coefficient matrix times this layer's θ'_i / θ_i
            return m if column is None else m * column
        gram = x @ x.transpose(-1, -2)
        d_theta = scaled(coef["Dtheta"][:, :, 0])
        layer = {"d_theta": d_theta}
        if with_momentum:  # δ enters through S, U_t = h_t W_{t−1}
            p_theta = scaled(coef["Ptheta"][:, :, 0])
            layer.update(p_theta=p_theta, dp=coef["Dactive"][:, :, 0] @ p_theta)
            rhs = beta_prev * (x @ w) + prev_m * (x @ s0) - ((coef["Lactive"][:, :, 0] @ p_theta) * gram) @ delta
        else:
            rhs = beta_prev * (x @ w) + delta
        system = scaled(coef["L"][:, :, 0]) * gram
        layer["u"] = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        per_layer.append(layer)

    def mm(layer, r):
        (x, delta), c = factors[layer], per_layer[layer]
        scores = r @ x.transpose(-1, -2)
        z = _plus_product(_plus_scaled(None, beta.unsqueeze(-1), r, weights[layer]), scores * c["d_theta"], c["u"], -1)
        if with_momentum:
            z = _plus_product(_plus_scaled(z, d_m, r, momentum[layer]), scores * c["dp"], delta, -1)
        return z

    out, _ = forward(rule, q, q_raw, souped(mm, coef.get("soup")))
    new_w, new_s = [], momentum
    for (x, delta), w, c in zip(factors, weights, per_layer):
        new_w.append(_plus_product(beta[..., -1:, None] * w, x.transpose(-1, -2),
                                   c["d_theta"][..., -1, :].unsqueeze(-1) * c["u"], -1))
    if with_momentum:
        m_last = coef["m"][:, :, 0][..., -1:, None]
        new_w = [_plus_product(torch.addcmul(w_c, d_m[..., -1:, :], s0), x.transpose(-1, -2),
                               c["dp"][..., -1, :].unsqueeze(-1) * delta, -1)
                 for w_c, (x, delta), s0, c in zip(new_w, factors, momentum, per_layer)]
        new_s = [_plus_product(m_last * s0, x.transpose(-1, -2), c["p_theta"][..., -1, :].unsqueeze(-1) * delta, -1)
                 for (x, delta), s0, c in zip(factors, momentum, per_layer)]
    return out, new_w, new_s


#: above this many bytes of per-token momenta and Newton–Schulz iterates over the sequence, Muon's chunks are
#: recomputed in the backward instead of stored (:func:`_muon_segment`).
MUON_STORED_BYTES = 512 * 2**20


def _muon_stored_bytes(rule, s, weights, n_chunks) -> int:
    """What the backward of every Muon chunk would keep: per token and weight the momentum, the ``ns_steps``
    iterates (three tensors each) and the orthogonalised update, in the memory's dtype."""
    b, h = s.q.shape[:2]
    per_token = sum(w.shape[-2] * w.shape[-1] for w in weights) * (2 + 3 * rule.ns_steps)
    return n_chunks * rule.chunk_size * b * h * per_token * s.q.element_size()


def _muon_segment(rule, q, q_raw, weights, momentum, factors, coef):
    """Muon (Atlas §5.1): all momenta ``S_t`` of the chunk are known from the frozen-point gradients, so
    ``NS_k(S_t)`` is applied to all of them in parallel, then ``W_t = β_t W_0 + Σ_{j≤t} (β_t/β_j) θ_j NS_k(S_j)``.

    On long sequences (``coef["checkpoint"]``: more than :data:`MUON_STORED_BYTES` over the sequence) the per-token
    momenta and Newton–Schulz iterates of a chunk are recomputed in the backward (activation checkpointing)
    instead of stored: kept for every chunk they take O(T · weights) memory (gigabytes at 4K); below it, storing
    them saves the recomputation (a third of a short sequence's fwd+bwd)."""
    if coef.get("checkpoint"):
        return checkpoint(_muon_chunk, rule, q, q_raw, weights, momentum, factors, coef, use_reentrant=False)
    return _muon_chunk(rule, q, q_raw, weights, momentum, factors, coef)


def _muon_chunk(rule, q, q_raw, weights, momentum, factors, coef):
    """The reads ``h_t W_t = β_t (h_t W_0) + Σ_{j≤t} D[t,j] (h_t O_j)`` take ``h_t O_j`` for every pair in one
    product per layer (``O_j = NS_k(S_j)``), without forming the per-token weights ``W_t``."""
    beta, m = coef["beta"][:, :, 0], coef["m"][:, :, 0]
    p, d_theta = coef["P"][:, :, 0], coef["Dtheta"][:, :, 0]
    orthos, new_s = [], []
    for (x, delta), s0 in zip(factors, momentum):
        s_all = m[..., None, None] * s0.unsqueeze(2) - torch.einsum("bhte,bhei,bheo->bhtio", p, x, delta)
        orthos.append(newton_schulz(s_all, rule.ns_steps))
        new_s.append(s_all[:, :, -1].clone())  # a view would keep every token's momentum alive

    def mm(layer, r):
        o = orthos[layer]                                               # [B, H, C, in, out]
        b, h, c, d_in, d_out = o.shape
        pairs = (r @ o.transpose(2, 3).reshape(b, h, d_in, c * d_out)).view(b, h, c, c, d_out)  # h_t O_j
        return torch.baddbmm((beta.unsqueeze(-1) * (r @ weights[layer])).view(-1, 1, d_out),
                             d_theta.reshape(-1, 1, c), pairs.view(-1, c, d_out)).view(b, h, c, d_out)

    out, _ = forward(rule, q, q_raw, souped(mm, coef.get("soup")))
    new_w = [beta[..., -1:, None] * w + torch.einsum("bhj,bhjio->bhio", d_theta[:, :, -1], o)
             for w, o in zip(weights, orthos)]
    return out, new_w, new_s


_SEGMENTS = {"gd": _linear_segment, "omega": _linear_segment, "momentum": _linear_segment,
             "muon": _muon_segment, "dgd": _dgd_segment,
             "dgd-momentum": _dgd_segment}
