"""Rotary position embedding (Su et al. 2021, RoFormer Eq. 34), in the Llama "rotate-half" layout: channel ``i`` of the
first half is paired with channel ``i + D/2``, both rotated by the angle ``position · theta^(−2i/D)``."""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate ``x`` ``[B, T, H, D]`` (``D`` even) by its token positions ``[B, T]``. Angles are computed in at least
    fp32; the result has ``x.dtype``."""
    d = x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=dtype) / d)
    angles = positions.to(dtype)[..., None] * inv_freq  # [B, T, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
