"""Chimera's 2-D selective state space model (Behrouz, Santacatterina, Zabih, NeurIPS 2024, arXiv 2406.04320 §3;
equations as read in ../shared/NEXT-WAVE.md §2.2, choices in docs/decisions.md "Chimera").

Per head (Mamba-2 layout: a scalar decay per head, head dim ``P``, state size ``N``, ``B``/``C`` shared by the
heads), for the cell of variate ``v`` and time token ``t`` (Roesser form)::

    h1[v,t] = Ā1 h1[v,t−1] + Ā2 h2[v,t−1] + B̄1 ⊗ x[v,t]        temporal state
    h2[v,t] = Ā3 h1[v−1,t] + Ā4 h2[v−1,t] + B̄2 ⊗ x[v,t]        cross-variate state
    y[v,t]  = C1·h1[v,t] + C2·h2[v,t] + D ⊙ x[v,t]

with, per cell and head, ``Δi = softplus(Linear(x) + bias)`` and per cell ``Bi, Ci = Linear(x)`` (selective),
``Ā1 = exp(Δ1 A1)``, ``Ā4 = exp(Δ2 A4)``, ``A = −exp(A_log)``, ``B̄i = Δi Bi`` (Mamba's simplified ZOH), and the
cross terms as the ZOH of a coupling held over the step: ``Ā2 = σ(c2)(1 − Ā1)``, ``Ā3 = σ(c3)(1 − Ā4)``.

**Bounded.** Each state's coefficients sum to ``r = Ā1 + Ā2 = Ā1 + σ(c2)(1 − Ā1) < 1`` (``Ā3 + Ā4 < 1`` likewise),
so by induction over the cells in recurrence order every state entry obeys
``|h| ≤ K = max over cells and both states of |B̄ ⊗ x| / (1 − r)``: if every earlier state is within ``K``, then
``|h[v,t]| ≤ r K + |B̄x| ≤ r K + (1 − r) K = K``. ``K`` stays finite as ``Δ → 0`` (``B̄ ∝ Δ`` and ``1 − r ∝ Δ``), so
the 2-D recurrence cannot blow up however long the series or however many variates.

Execution (:func:`ssm2d`): ``"reference"`` is the literal double loop over ``(v, t)`` (the test oracle); ``"scan"``
is the exact row sweep (NEXT-WAVE §2.3): for each variate in order, ``h2[v, :]`` is one vectorised step from row
``v − 1`` (all ``t`` at once), then ``h1[v, :]`` is one chunked :func:`~.scan.linear_scan` along ``t`` with input
``Ā2 h2[v, t−1] + B̄1 x[v, t]``. Without the coupling the two states are independent 1-D selective SSMs, computed
along each axis by :func:`~.scan.selective_scan` without per-cell states. The same module with one axis switched off
is TSM2's token (time) or channel (variate) mixer (:mod:`.tsm2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.autograd.function import once_differentiable

from ..layers.common import RMSNorm, ShortConvolution
from .scan import linear_scan, selective_scan

AXES = ("time", "variate")
MODES = ("scan", "reference")
#: Chimera's head groups: which time step ranges the heads are initialised in (trend first, then seasonal).
HEAD_GROUPS = ("both", "trend", "seasonal")
#: the mixer's short convolutions: ``conv_axis`` → the axes convolved, in order. Chimera's default ``both``: without
#: a variate convolution its cross-variate state alone did not carry the synthetic set's cross-variate signal (test
#: MSE 0.97, as without coupling; 0.79 with it; docs/decisions.md).
CONV_AXES = {"time": ("time",), "variate": ("variate",), "both": ("time", "variate")}


@dataclass
class Axis:
    """One state's per-cell parameters, laid out for :func:`ssm2d`: ``log_a`` (``log Ā = Δ A``) and ``dt`` (``Δ``)
    ``[..., V, H, T]``; ``B``, ``C`` ``[..., V, 1, T, N]`` (shared by the heads)."""
    log_a: torch.Tensor
    dt: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor

    def input(self, x):
        """``B̄ ⊗ x = Δ B ⊗ x`` for ``x [..., H, T, P]`` at the same cells: ``[..., H, T, P, N]`` (also for one
        cell: ``x [..., H, P]`` with this axis at that cell)."""
        return _outer(self.dt.unsqueeze(-1) * x, self.B)

    def at(self, v: int, t: int) -> Axis:
        """The parameters of one cell: ``log_a``, ``dt`` ``[..., H]``; ``B``, ``C`` ``[..., 1, N]``."""
        return Axis(self.log_a[..., v, :, t], self.dt[..., v, :, t], self.B[..., v, :, t, :], self.C[..., v, :, t, :])

    def rows(self) -> list[tuple]:
        """``(Δ, B, C, log Ā)`` of each variate's row (``unbind``: its backward is one stack, not a zero-filled copy
        of the whole tensor per row)."""
        return list(zip(self.dt.unbind(-3), self.B.unbind(-4), self.C.unbind(-4), self.log_a.unbind(-3)))

    def transposed(self) -> Axis:
        """The same cells with the variate and time axes swapped."""
        return Axis(self.log_a.transpose(-3, -1), self.dt.transpose(-3, -1), self.B.transpose(-4, -2),
                    self.C.transpose(-4, -2))


def _outer(u, B):
    """``u ⊗ B``: ``u [..., H, T, P]``, ``B [..., 1, T, N]`` → ``[..., H, T, P, N]`` (or one cell: ``[..., H, P]``,
    ``[..., 1, N]``)."""
    return u.unsqueeze(-1) * B.unsqueeze(-2)


def _read(h, C):
    """``C · h`` over the state: ``h [..., H, T, P, N]``, ``C [..., 1, T, N]`` → ``[..., H, T, P]`` (or one cell:
    ``[..., H, P, N]``, ``[..., 1, N]``)."""
    return (h @ C.unsqueeze(-1)).squeeze(-1)


def ssm2d(x, time: Axis | None, variate: Axis | None, cross=None, *, mode: str = "scan", chunk_size: int = 16,
          states: bool = False):
    """The 2-D recurrence (module docstring) without the skip ``D ⊙ x``.

    ``x [..., V, H, T, P]``; ``time`` / ``variate`` the temporal (``h1``) and cross-variate (``h2``) states' cell
    parameters (:class:`Axis`; ``None`` switches that state off); ``cross = (Ā2, Ā3)`` ``[..., V, H, T]`` each, or
    ``None`` for no coupling (needs both states). Returns ``y [..., V, H, T, P]``, and with ``states=True`` also
    ``(h1, h2)`` ``[..., V, H, T, P, N]`` (``None`` for a state switched off)."""
    if time is None and variate is None:
        raise ValueError("ssm2d needs at least one of the time and variate states")
    if cross is not None and (time is None or variate is None):
        raise ValueError("the 2-D coupling (Ā2, Ā3) needs both the time and the variate state")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "reference":
        return _double_loop(x, time, variate, cross, states)
    if cross is None and not states:
        return _independent(x, time, variate, chunk_size)
    return _row_sweep(x, time, variate, cross, chunk_size, states)


def _independent(x, time, variate, chunk_size):
    """No coupling: a 1-D selective SSM along time per variate plus one along the variates per time token."""
    y = 0
    if time is not None:
        y = y + selective_scan(time.log_a, time.dt.unsqueeze(-1) * x, time.B, time.C, chunk_size)
    if variate is not None:
        var, xt = variate.transposed(), x.transpose(-4, -2)
        y = y + selective_scan(var.log_a, var.dt.unsqueeze(-1) * xt, var.B, var.C, chunk_size).transpose(-4, -2)
    return y


def _row_sweep(x, time, variate, cross, chunk_size, states):
    """Exact: variates in order; per variate one vectorised variate step, then one chunked scan along time
    (:class:`_Row`)."""
    n_var = x.shape[-4]
    rows = zip(x.unbind(-4), *(axis.rows() if axis is not None else [(None,) * 4] * n_var for axis in (time, variate)),
               *(c.unbind(-3) for c in cross) if cross is not None else ([None] * n_var,) * 2)
    ys, h1s, h2s = [], [], []
    h1 = h2 = None
    for xv, time_row, variate_row, a2, a3 in rows:
        y, h1, h2 = _Row.apply(chunk_size, xv, *time_row, *variate_row, a2, a3, h1, h2)
        ys.append(y)
        if states:
            h1s.append(h1)
            h2s.append(h2)
    y = torch.stack(ys, -4)
    if not states:
        return y
    return y, *(torch.stack(h, -5) if h[0] is not None else None for h in (h1s, h2s))


def _scalar(a):
    """A per-(head, cell) scalar ``[..., H, T]`` as a factor of states ``[..., H, T, P, N]``."""
    return a[..., None, None]


def _dot(g, h):
    """``Σ_{p,n} g ⊙ h`` per (head, cell): ``[..., H, T, P, N]`` twice (contiguous) → ``[..., H, T]``, as one
    batched matmul (no state-sized temporary)."""
    return (g.flatten(-2).unsqueeze(-2) @ h.flatten(-2).unsqueeze(-1)).flatten(-3)


def _lagged_dot(g, h):
    """``Σ_{p,n} g[t] ⊙ h[t − 1]`` (0 at ``t = 0``); ``vecdot`` takes the shifted views without copying them."""
    return F.pad(torch.linalg.vecdot(g[..., 1:, :, :].flatten(-2), h[..., :-1, :, :].flatten(-2)), (1, 0))


def _add_lagged(target, a, h, lag: int):
    """``target[t] += a[t] h[t − 1]`` (``lag = 1``) or ``target[t] += a[t + 1] h[t + 1]`` (``lag = −1``), in place."""
    if lag == 1:
        target[..., 1:, :, :].addcmul_(_scalar(a[..., 1:]), h[..., :-1, :, :])
    else:
        target[..., :-1, :, :].addcmul_(_scalar(a[..., 1:]), h[..., 1:, :, :])


def _outer_plus(g, u, B):
    """``g + u ⊗ B`` (``g`` may be ``None``), one pass."""
    return _outer(u, B) if g is None else torch.addcmul(g, u.unsqueeze(-1), B.unsqueeze(-2))


def _over_heads(u, G):
    """``Σ_{h,p} u[h,t,p] G[h,t,p,n]``: the gradient of a head-shared ``[..., 1, T, N]`` factor."""
    return (u.unsqueeze(-2) @ G).sum(-4, keepdim=True).squeeze(-2)


class _Row(torch.autograd.Function):
    """One row ``v`` of the sweep from row ``v − 1``'s states ``(h1p, h2p)`` (``None`` for the first row), with
    a hand-written backward (the adjoint recurrence: a reverse :func:`~.scan.linear_scan` along time). It saves
    only the row's inputs and its two states (no per-op temporaries, no recomputation) and makes far fewer
    state-sized memory passes than autograd through the same ops (fused in-place updates, no shifted copies)::

        h2 = B̄2 ⊗ x + Ā4 h2p + Ā3 h1p,    h1 = scan_t(Ā1; B̄1 ⊗ x + Ā2 h2[t−1]),    y = C1·h1 + C2·h2

    Any of the time fields ``(dt1, B1, C1, log_a1)``, the variate fields ``(dt2, B2, C2, log_a4)`` or the coupling
    ``Ā2, Ā3`` may be ``None`` (that part switched off); ``h1``/``h2`` come back ``None`` when their state is off."""

    @staticmethod
    def forward(ctx, chunk_size, x, dt1, B1, C1, log_a1, dt2, B2, C2, log_a4, a2, a3, h1p, h2p):
        ctx.set_materialize_grads(False)
        ctx.chunk_size = chunk_size
        y = h1 = h2 = None
        if dt2 is not None:
            h2 = _outer(dt2.unsqueeze(-1) * x, B2)
            if h2p is not None:
                h2.addcmul_(_scalar(log_a4.exp()), h2p)
                if a3 is not None:
                    h2.addcmul_(_scalar(a3), h1p)
            y = _read(h2, C2)
        if dt1 is not None:
            drive = _outer(dt1.unsqueeze(-1) * x, B1)
            if a2 is not None:
                _add_lagged(drive, a2, h2, 1)
            h1 = linear_scan(log_a1, drive, chunk_size=chunk_size)
            y = _read(h1, C1) if y is None else y + _read(h1, C1)
        ctx.save_for_backward(x, dt1, B1, C1, log_a1, dt2, B2, C2, log_a4, a2, a3, h1p, h2p, h1, h2)
        return y, h1, h2

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gh1, gh2):
        x, dt1, B1, C1, log_a1, dt2, B2, C2, log_a4, a2, a3, h1p, h2p, h1, h2 = ctx.saved_tensors
        g = dict.fromkeys(("x", "dt1", "B1", "C1", "log_a1", "dt2", "B2", "C2", "log_a4", "a2", "a3", "h1p", "h2p"))
        gy = torch.zeros_like(x) if gy is None else gy
        g2 = _outer_plus(gh2, gy, C2) if h2 is not None else None           # dL/dh2 (more below)
        if h1 is not None:
            g1 = _outer_plus(gh1, gy, C1)                                      # dL/dh1
            lam = linear_scan(log_a1, g1, chunk_size=ctx.chunk_size, reverse=True)   # dL/d drive
            g["log_a1"] = _lagged_dot(lam, h1) * log_a1.exp()
            g["C1"] = _over_heads(gy, h1)
            u1 = dt1.unsqueeze(-1) * x
            g["B1"] = _over_heads(u1, lam)
            gu1 = _read(lam, B1)
            g["dt1"], g["x"] = (gu1 * x).sum(-1), gu1 * dt1.unsqueeze(-1)
            if a2 is not None:  # drive[t] ∋ Ā2[t] h2[t − 1]
                g["a2"] = _lagged_dot(lam, h2)
                _add_lagged(g2, a2, lam, -1)
        if h2 is not None:
            g["C2"] = _over_heads(gy, h2)
            u2 = dt2.unsqueeze(-1) * x
            g["B2"] = _over_heads(u2, g2)
            gu2 = _read(g2, B2)
            g["dt2"] = (gu2 * x).sum(-1)
            g["x"] = gu2 * dt2.unsqueeze(-1) if g["x"] is None else g["x"] + gu2 * dt2.unsqueeze(-1)
            if h2p is not None:
                a4 = log_a4.exp()
                g["log_a4"], g["h2p"] = _dot(g2, h2p) * a4, _scalar(a4) * g2
                if a3 is not None:
                    g["a3"], g["h1p"] = _dot(g2, h1p), _scalar(a3) * g2
        return None, *g.values()


def _double_loop(x, time, variate, cross, states):
    """The literal recurrence, one cell at a time (the oracle)."""
    n_var, _, n_time, _ = x.shape[-4:]
    h1 = [[None] * n_time for _ in range(n_var)]
    h2 = [[None] * n_time for _ in range(n_var)]
    ys = [[None] * n_time for _ in range(n_var)]
    for v in range(n_var):
        for t in range(n_time):
            xc, y = x[..., v, :, t, :], 0
            if variate is not None:
                cell = variate.at(v, t)
                h = cell.input(xc)
                if v:
                    h = h + _scalar(cell.log_a.exp()) * h2[v - 1][t]
                    if cross is not None:
                        h = h + _scalar(cross[1][..., v, :, t]) * h1[v - 1][t]
                h2[v][t] = h
                y = y + _read(h, cell.C)
            if time is not None:
                cell = time.at(v, t)
                h = cell.input(xc)
                if t:
                    h = h + _scalar(cell.log_a.exp()) * h1[v][t - 1]
                    if cross is not None:
                        h = h + _scalar(cross[0][..., v, :, t]) * h2[v][t - 1]
                h1[v][t] = h
                y = y + _read(h, cell.C)
            ys[v][t] = y
    y = torch.stack([torch.stack(row, -2) for row in ys], -4)
    if not states:
        return y
    return y, *(torch.stack([torch.stack(row, -3) for row in h], -5) if h[0][0] is not None else None
                for h in (h1, h2))


class Constant(nn.Module):
    """The input-independent stand-in for a projection (``selective=False``): the same ``[out]`` vector at every
    cell."""

    def __init__(self, out: int):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(out))

    def forward(self, x):
        return self.value.expand(x.shape[:-1] + self.value.shape)


def _inverse_softplus(y):
    return y + torch.log(-torch.expm1(-y))


def _log_uniform(n: int, low: float, high: float):
    if not 0 < low <= high:
        raise ValueError(f"a step size range must satisfy 0 < low <= high, got ({low}, {high})")
    return torch.exp(torch.empty(n).uniform_(math.log(low), math.log(high)))


class Chimera2DSSM(nn.Module):
    """The 2-D selective SSM (module docstring) on ``[dirs, B, V, T, C]`` cells → the same shape.

    ``C = heads · head_dim``. Direction ``d`` (``dirs = 2`` for bidirectional use) has its own parameters and its
    cells arrive in its own frame (the caller flips the variate axis for the backward direction). ``axes`` picks the
    states (``("time",)`` alone is a Mamba-2-style SSM along time, ``("variate",)`` one along the variates);
    ``coupling`` adds Ā2, Ā3. ``time_dt`` is a list of ``(low, high)`` ranges of the initial Δ1: the heads are split
    into that many equal groups, in order (Chimera: trend heads with small Δ1, seasonal heads with large Δ1);
    ``variate_dt`` the range of the initial Δ2, ``a_init`` of ``−A``, ``coupling_init`` of ``σ(c2)``, ``σ(c3)``;
    ``mode``, ``chunk_size``: :func:`ssm2d`'s."""

    def __init__(self, channels: int, *, head_dim: int = 16, state_size: int = 16, axes=AXES, directions: int = 1,
                 coupling: bool = True, selective: bool = True, time_dt=((1e-3, 1e-1),), variate_dt=(1e-3, 1e-1),
                 a_init=(1.0, 16.0), coupling_init: float = 0.5, mode: str = "scan", chunk_size: int = 16):
        super().__init__()
        axes = tuple(axes)
        if not axes or any(a not in AXES for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"axes must be a non-empty subset of {AXES}, got {axes}")
        if coupling and len(axes) != 2:
            raise ValueError("the coupling Ā2, Ā3 needs both axes; pass coupling=False for a 1-D SSM")
        if channels % head_dim:
            raise ValueError(f"channels={channels} is not divisible by head_dim={head_dim}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0 < coupling_init < 1:
            raise ValueError(f"coupling_init must lie in (0, 1), got {coupling_init}")
        heads = channels // head_dim
        self.axes, self.heads, self.head_dim, self.state_size = axes, heads, head_dim, state_size
        self.coupling, self.mode, self.chunk_size = coupling, mode, chunk_size
        n_axes = len(axes)
        features = n_axes * (heads + 2 * state_size)           # per axis: Δ per head, B, C
        self.proj = nn.ModuleList(nn.Linear(channels, features) if selective else Constant(features)
                                  for _ in range(directions))
        if not selective:
            for p in self.proj:
                with torch.no_grad():
                    p.value.view(n_axes, -1)[:, heads:].normal_(0, state_size ** -0.5)
        dt = torch.stack([self._initial_dt(axis, time_dt, variate_dt) for axis in axes])   # [axes, H]
        self.dt_bias = nn.Parameter(_inverse_softplus(dt).expand(directions, -1, -1).clone())
        low, high = a_init
        self.A_log = nn.Parameter(torch.empty(directions, n_axes, heads).uniform_(low, high).log())
        self.coupling_logit = nn.Parameter(torch.full((directions, 2, heads), math.log(
            coupling_init / (1 - coupling_init)))) if coupling else None
        self.D = nn.Parameter(torch.ones(directions, heads))

    def _initial_dt(self, axis, time_dt, variate_dt):
        if axis == "variate":
            return _log_uniform(self.heads, *variate_dt)
        groups = list(time_dt)
        if not groups or self.heads < len(groups):
            raise ValueError(f"{self.heads} heads cannot be split into {len(groups)} time step groups")
        sizes = [self.heads // len(groups) + (i < self.heads % len(groups)) for i in range(len(groups))]
        return torch.cat([_log_uniform(n, *r) for n, r in zip(sizes, groups)])

    def cells(self, x):
        """The recurrence's per-cell inputs for ``x [dirs, B, V, T, C]``: ``(x [dirs, B, V, H, T, P], time, variate,
        cross)`` as :func:`ssm2d` takes them."""
        dirs, heads, n = x.shape[0], self.heads, self.state_size
        if dirs != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} directions on axis 0, got {dirs}")
        f = torch.stack([proj(xd) for proj, xd in zip(self.proj, x)])         # [dirs, B, V, T, F]
        f = f.unflatten(-1, (len(self.axes), heads + 2 * n))
        expand = (slice(None), None, None, None)                                # [dirs] → [dirs, 1, 1, 1]
        delta = F.softplus(f[..., :heads] + self.dt_bias[expand])               # [dirs, B, V, T, axes, H]
        log_a = -delta * self.A_log.exp()[expand]
        # contiguous [.., H, T] cells: the state-sized products then come out contiguous too (no copies in scans)
        params = {axis: Axis(log_a[..., i, :].transpose(-1, -2).contiguous(),
                             delta[..., i, :].transpose(-1, -2).contiguous(),
                             f[..., i, heads:heads + n].unsqueeze(-3), f[..., i, heads + n:].unsqueeze(-3))
                  for i, axis in enumerate(self.axes)}
        time, variate = params.get("time"), params.get("variate")
        cross = None
        if self.coupling:  # Ā2 = σ(c2)(1 − Ā1), Ā3 = σ(c3)(1 − Ā4)
            gate = torch.sigmoid(self.coupling_logit)[:, None, None, :, :, None]   # [dirs, 1, 1, 2, H, 1]
            cross = (gate[..., 0, :, :] * -torch.expm1(time.log_a), gate[..., 1, :, :] * -torch.expm1(variate.log_a))
        return x.unflatten(-1, (heads, self.head_dim)).transpose(-3, -2).contiguous(), time, variate, cross

    def forward(self, x):
        xh, time, variate, cross = self.cells(x)
        y = ssm2d(xh, time, variate, cross, mode=self.mode, chunk_size=self.chunk_size)
        y = y + self.D[:, None, None, :, None, None] * xh
        return y.transpose(-3, -2).flatten(-2)


def _along(conv, x, axis: str):
    """A :class:`ShortConvolution` along time (``[B, V, T, C]`` as ``[B·V, T, C]``) or along the variates."""
    if axis == "variate":
        return _along(conv, x.transpose(1, 2), "time").transpose(1, 2)
    return conv(x.flatten(0, 1))[0].unflatten(0, x.shape[:2])


class SelectiveMixer(nn.Module):
    """A Mamba block over the ``[B, V, T, D]`` cell grid around :class:`Chimera2DSSM`: in-projection to
    ``expand · D`` channels (``x``, ``z``); per direction, in its frame, short causal convolutions along
    ``conv_axis`` (``time``, ``variate`` or ``both``: time, then variates) and SiLU; the SSM; the directions mapped
    back to the forward frame and summed; the data-dependent
    output gate ``SiLU(z)`` (Chimera's variate-selection head, TSM2's ``x̄_MLP``); out-projection. ``bidirectional``
    runs a second direction over the flipped variate axis."""

    def __init__(self, dim: int, *, expand: int = 2, conv_size: int = 4, conv_axis: str = "both",
                 bidirectional: bool = True, **ssm_options):
        super().__init__()
        if conv_axis not in CONV_AXES:
            raise ValueError(f"conv_axis must be one of {list(CONV_AXES)}, got {conv_axis!r}")
        inner = expand * dim
        directions = 2 if bidirectional else 1
        self.conv_axes = CONV_AXES[conv_axis]
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.conv = nn.ModuleList(nn.ModuleList(ShortConvolution(inner, conv_size) for _ in self.conv_axes)
                                  for _ in range(directions))
        self.ssm = Chimera2DSSM(inner, directions=directions, **ssm_options)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, u):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        frames = [x, x.flip(1)][:len(self.conv)]
        xs = torch.stack([F.silu(self._convolved(convs, xd)) for convs, xd in zip(self.conv, frames)])
        ys = self.ssm(xs)
        y = sum(yd if d == 0 else yd.flip(1) for d, yd in enumerate(ys))
        return self.out_proj(y * F.silu(z))

    def _convolved(self, convs, x):
        for conv, axis in zip(convs, self.conv_axes):
            x = _along(conv, x, axis)
        return x


class ChimeraBlock(nn.Module):
    """Pre-norm residual: ``u + Mixer(RMSNorm(u))``, then ``u + MLP(RMSNorm(u))`` (GELU, ``mlp_ratio · D``)."""

    def __init__(self, dim: int, *, mlp_ratio: int = 2, dropout: float = 0.0, **mixer_options):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.mixer = SelectiveMixer(dim, **mixer_options)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, u):
        u = u + self.drop(self.mixer(self.norm1(u)))
        return u + self.drop(self.mlp(self.norm2(u)))


def check_tokens(tokens, num_variates: int):
    if tokens.dim() != 4 or tokens.shape[1] != num_variates:
        raise ValueError(f"expected tokens [B, V={num_variates}, N, D], got {tuple(tokens.shape)}")


class ChimeraBackbone(nn.Module):
    """``layers`` :class:`ChimeraBlock` s and a final RMSNorm: ``[B, V, N, D] → [B, V, N, D]``, causal in ``N``.

    Options (defaults in brackets): ``expand`` [2], ``head_dim`` [16], ``state_size`` [16], ``conv_size`` [4],
    ``mlp_ratio`` [2], ``dropout`` [0]; ablations ``coupling`` [True] (False: Ā2 = Ā3 = 0), ``bidirectional`` [True],
    ``selective`` [True] (False: Δ, B, C learned constants), ``heads`` ["both"] ("trend" / "seasonal": every head
    in that group); the groups' initial Δ1 ranges ``trend_dt`` [(1e-3, 1e-2)] and ``seasonal_dt`` [(1e-2, 1e-1)],
    ``variate_dt`` [(1e-3, 1e-1)], ``a_init`` [(1, 16)], ``coupling_init`` [0.5]; execution ``mode`` ["scan" |
    "reference"] and ``chunk_size`` [16]."""

    def __init__(self, dim: int, num_variates: int, layers: int, *, heads: str = "both",
                 trend_dt=(1e-3, 1e-2), seasonal_dt=(1e-2, 1e-1), **options):
        super().__init__()
        if heads not in HEAD_GROUPS:
            raise ValueError(f"heads must be one of {HEAD_GROUPS}, got {heads!r}")
        time_dt = {"both": [trend_dt, seasonal_dt], "trend": [trend_dt], "seasonal": [seasonal_dt]}[heads]
        self.num_variates = num_variates
        self.blocks = nn.ModuleList(ChimeraBlock(dim, time_dt=time_dt, **options) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def forward(self, tokens):
        check_tokens(tokens, self.num_variates)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)
