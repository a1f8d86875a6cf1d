"""Rotary position embedding (Su et al. 2021, RoFormer Eq. 34), in the Llama "rotate-half" layout: channel ``i`` of the
first half is paired with channel ``i + D/2``, both rotated by the angle ``position · theta^(−2i/D)``."""

from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, d: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[B, T, 1, D]`` of the rotation angles ``position · theta^(−2i/D)`` in the rotate-half layout,
    computed in at least fp32 and returned in ``dtype`` (one computation for every tensor rotated at these
    positions)."""
    work = torch.promote_types(dtype, torch.float32)
    inv_freq = theta ** (-torch.arange(0, d, 2, device=positions.device, dtype=work) / d)
    angles = positions.to(work)[..., None] * inv_freq  # [B, T, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]  # [B, T, 1, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, T, H, D]`` rotated by the angles of :func:`rope_angles`."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate ``x`` ``[B, T, H, D]`` (``D`` even) by its token positions ``[B, T]``. Angles are computed in at least
    fp32; the result has ``x.dtype``."""
    return rotate(x, *rope_angles(positions, x.shape[-1], theta, x.dtype))
