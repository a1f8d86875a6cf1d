"""Exact chunked scans of the first-order linear recurrence ``h_t = a_t · h_{t−1} + b_t`` along one axis (Mamba-2's
SSD, Dao & Gu 2024, arXiv 2405.21060 §6 / ``ssd_minimal.py``).

The axis is cut into chunks of ``c`` steps. Inside a chunk the recurrence is one matmul with the masked decay matrix
``L[t, s] = Π_{s<l≤t} a_l = exp(segsum(log a))[t, s]`` (zero above the diagonal); the states entering the chunks come
from the chunk-end states by the same recurrence one level up (a ``K × K`` decay matrix over the ``K`` chunks). Every
product of decays is the exponential of a sum of ``log a`` over a range, never a ratio of cumulative products, so
it stays exact (and bounded) for ``log a ≤ 0`` however long the axis. The math runs in at least fp32; fp64 stays
fp64.

* :func:`linear_scan` returns every state ``h_t`` (needed where a state feeds another recurrence: Chimera's row
  sweep).
* :func:`selective_scan` returns only the read-outs ``y_t = C_t · h_t`` of a rank-one-input state
  ``h_t = a_t h_{t−1} + u_t ⊗ B_t`` without forming a state per step (the SSD dual form: ``(C Bᵀ ∘ L) u`` inside a
  chunk, states only at chunk boundaries).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..memory.chunked import segsum


def _math_dtype(*tensors):
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _chunk_length(steps: int, chunk_size: int) -> int:
    """The chunk length ``c ≤ chunk_size`` of the fewest chunks over ``steps``, as even as possible (96 steps with
    ``chunk_size = 64`` are two chunks of 48: no padding)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return -(-steps // -(-steps // chunk_size))


def _chunked(x, steps: int, chunk_size: int, dims_after: int):
    """``x [..., T, *rest]`` (``dims_after = len(rest)``) zero-padded along T to whole chunks and split into
    ``[..., K, c, *rest]``."""
    pad = -steps % chunk_size
    if pad:
        x = F.pad(x, (0, 0) * dims_after + (0, pad))
    return x.unflatten(x.dim() - dims_after - 1, (-1, chunk_size))


def _entering_states(log_total, ends, initial):
    """States entering each chunk: ``s_k = Σ_{j<k} (Π_{j<l<k} A_l) e_j + (Π_{l<k} A_l) s_0`` from the chunks' total
    log-decays ``log_total [..., K]``, their end states computed from zero ``ends [..., K, S]`` and the initial state
    ``initial [..., S]`` (or zero)."""
    if initial is None:
        initial = ends.new_zeros(ends.shape[:-2] + ends.shape[-1:])
    states = torch.cat([initial.unsqueeze(-2), ends[..., :-1, :]], dim=-2)
    decay = torch.exp(segsum(F.pad(log_total[..., :-1], (1, 0))))
    return decay @ states


def _check_axis(log_a, other, name: str, dims_after: int):
    if other.dim() < log_a.dim() + dims_after or other.shape[log_a.dim() - 1] != log_a.shape[-1]:
        raise ValueError(f"{name} must be [..., T{', ' + '*state' if dims_after else ''}] with T = "
                         f"{log_a.shape[-1]} (log_a {tuple(log_a.shape)}), got {tuple(other.shape)}")


def linear_scan(log_a, b, initial=None, chunk_size: int = 64, reverse: bool = False):
    """All states of ``h_t = exp(log_a_t) · h_{t−1} + b_t`` (``h_{−1}`` = ``initial`` or 0); with ``reverse`` the
    adjoint recurrence from the end, ``h_t = exp(log_a_{t+1}) · h_{t+1} + b_t`` (``h_{T−1} = b_{T−1} + initial``;
    inside a chunk the transposed decay matrix, the chunks carried from the last).

    ``log_a [..., T]``, ``b [..., T, *state]`` (the leading dims broadcast against ``log_a``'s), ``initial
    [..., *state]``; returns ``h [..., T, *state]`` in ``b``'s dtype, exact for any ``T`` and ``chunk_size`` (the
    longest chunk)."""
    steps = log_a.shape[-1]
    c = _chunk_length(steps, chunk_size)
    lead = log_a.dim() - 1
    _check_axis(log_a, b, "b", 0)
    state_shape = b.shape[lead + 1:]
    dtype = _math_dtype(log_a, b)
    flat = b.to(dtype).flatten(lead + 1) if state_shape else b.to(dtype).unsqueeze(-1)
    log_a = _chunked(log_a.to(dtype), steps, c, 0)                       # [..., K, c]
    flat = _chunked(flat, steps, c, 1)                                     # [..., K, c, S]
    decay = torch.exp(segsum(log_a))                                       # [..., K, c, c]
    if initial is not None:
        initial = initial.to(dtype).flatten(lead) if state_shape else initial.to(dtype).unsqueeze(-1)
    if reverse:
        h = decay.transpose(-1, -2) @ flat                                 # each chunk from a zero carry
        if log_a.shape[-2] > 1 or initial is not None:
            starts = log_a[..., 0].exp().unsqueeze(-1) * h[..., 0, :]      # a_{s_k} h_{s_k}: what chunk k passes back
            carry = _entering_states(log_a.sum(-1).flip(-1), starts.flip(-2), initial).flip(-2)
            h = h.addcmul_(decay[..., -1, :].unsqueeze(-1), carry.unsqueeze(-2))    # h: a fresh matmul result
    else:
        h = decay @ flat
        if log_a.shape[-2] > 1 or initial is not None:
            carry = _entering_states(log_a.sum(-1), h[..., -1, :], initial)
            h = h.addcmul_(torch.exp(log_a.cumsum(-1)).unsqueeze(-1), carry.unsqueeze(-2))
    h = h.flatten(-3, -2)[..., :steps, :]
    return (h.unflatten(-1, state_shape) if state_shape else h.squeeze(-1)).to(b.dtype)


def selective_scan(log_a, u, B, C, chunk_size: int = 64):
    """Read-outs ``y_t = C_t · h_t`` of ``h_t = exp(log_a_t) h_{t−1} + u_t ⊗ B_t`` from ``h_{−1} = 0``.

    ``log_a [..., T]``, ``u [..., T, P]``, ``B, C [..., T, N]`` (leading dims broadcast); returns ``y [..., T, P]``
    in ``u``'s dtype. Equals ``(linear_scan(log_a, u ⊗ B) · C).sum(N)`` without the ``[T, P, N]`` states."""
    steps = log_a.shape[-1]
    c = _chunk_length(steps, chunk_size)
    for name, t in (("u", u), ("B", B), ("C", C)):
        _check_axis(log_a, t, name, 1)
    dtype = _math_dtype(log_a, u, B, C)
    log_a = _chunked(log_a.to(dtype), steps, c, 0)                        # [..., K, c]
    u, B, C = (_chunked(t.to(dtype), steps, c, 1) for t in (u, B, C))     # [..., K, c, ·]
    decay = torch.exp(segsum(log_a))                                       # [..., K, c, c]
    y = ((C @ B.transpose(-1, -2)) * decay) @ u                            # inside each chunk
    if log_a.shape[-2] > 1:
        ends = (B * decay[..., -1, :].unsqueeze(-1)).transpose(-1, -2) @ u     # [..., K, N, P] chunk-end states
        entering = _entering_states(log_a.sum(-1), ends.flatten(-2), None).unflatten(-1, ends.shape[-2:])
        y = y + torch.exp(log_a.cumsum(-1)).unsqueeze(-1) * (C @ entering)
    return y.flatten(-3, -2)[..., :steps, :].to(u.dtype)
