"""Task heads on a backbone's tokens ``h [B, V, N, D]`` (V variates × N time tokens).

* :class:`ForecastHead`: PatchTST's flatten head (Nie et al., ICLR 2023, §3.1; TSLib ``models/PatchTST.py::
  FlattenHead``): each variate's N tokens flattened to ``N·D`` → ``Linear(N·D, pred_len)``, one head shared by all
  variates (PatchTST's default, ``individual=False``) → ``[B, pred_len, V]``. Dropout acts on the head's input
  features, as in the classification head (PatchTST drops out the forecast itself).
* :class:`ClassificationHead`: the mean of each variate's real time tokens (the padding mask reduced to tokens),
  the V means flattened → ``Linear(V·D, num_classes)`` → logits ``[B, num_classes]``.
* :class:`ReconstructionHead` (anomaly detection by reconstruction error, TSLib ``exp_anomaly_detection.py``): each
  token → ``Linear(D, patch_len)``, the patches put back on the time axis, overlaps averaged
  (:func:`~nestedmemory.timeseries.embed.unpatchify`) → ``[B, L, V]``.
"""

from __future__ import annotations

import torch
from torch import nn

from .embed import unpatchify


class ForecastHead(nn.Module):
    def __init__(self, num_tokens: int, dim: int, pred_len: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(num_tokens * dim, pred_len)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(h.flatten(-2))).transpose(1, 2)


class ClassificationHead(nn.Module):
    def __init__(self, num_variates: int, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(num_variates * dim, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``token_mask [B, N]`` (1 = a token holding a real step; ``None``: all real)."""
        if token_mask is None:
            pooled = h.mean(2)
        else:
            weights = token_mask[:, None, :, None].to(h.dtype)
            pooled = (h * weights).sum(2) / weights.sum(2).clamp_min(1)
        return self.linear(self.dropout(pooled.flatten(1)))


class ReconstructionHead(nn.Module):
    def __init__(self, dim: int, patch_len: int, stride: int, seq_len: int):
        super().__init__()
        self.linear = nn.Linear(dim, patch_len)
        self.stride, self.seq_len = stride, seq_len

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.linear(h), self.seq_len, self.stride)
