"""Inputs of the time-series models: reversible instance normalisation, patching and the token embedding.

* :class:`RevIN` (Kim et al., ICLR 2022, Eq. 1-2 and 4): each series is normalised over its input window by its
  own per-variate mean and standard deviation (then an optional learnable affine map), and the model's output is
  mapped back with the same statistics, so the network sees stationary inputs and its outputs keep each series'
  level and scale. The statistics are constants for the gradient (``.detach()``, as in Kim et al.'s and PatchTST's
  code), ``σ = sqrt(Var + ε)`` with the biased variance.
* :func:`patchify` / :func:`unpatchify`: PatchTST's patching (Nie et al., ICLR 2023, §3.1; ``PatchTST_backbone.py``
  with ``padding_patch="end"``, TSLib ``layers/Embed.py::PatchEmbedding``): the end of each series is padded with
  ``stride`` copies of its last value (``ReplicationPad1d((0, stride))``), then cut into windows of ``patch_len``
  every ``stride`` steps, giving ``N = ⌊(L − patch_len) / stride⌋ + 2`` patches. ``patch_len = 1`` (``stride = 1``)
  means the raw steps, ``N = L``: there every step is already a token and PatchTST's extra patch would only repeat
  the last one, so nothing is padded.
* :class:`PatchEmbedding`: the value projection ``Linear(patch_len, dim)`` of every patch, plus optionally a
  learnable embedding per variate (for the models that mix variates: it tells them apart) and a learned embedding
  per token index (PatchTST's ``W_pos``; recurrent backbones know the order without it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def num_tokens(seq_len: int, patch_len: int, stride: int) -> int:
    """The number of tokens :func:`patchify` cuts ``seq_len`` steps into."""
    return seq_len if patch_len == 1 else (seq_len - patch_len) // stride + 2


def patchify(x: torch.Tensor, patch_len: int, stride: int) -> torch.Tensor:
    """``x [B, L, V]`` → patches ``[B, V, N, patch_len]`` (module docstring: PatchTST's end padding)."""
    x = x.transpose(1, 2)
    if patch_len > 1:
        x = F.pad(x, (0, stride), mode="replicate")
    return x.unfold(-1, patch_len, stride)


def unpatchify(patches: torch.Tensor, seq_len: int, stride: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: patches ``[B, V, N, P]`` → ``[B, seq_len, V]``, each step the mean of the
    values the (overlapping, when ``stride < P``) patches give it; the padded end is dropped."""
    n, p = patches.shape[-2:]
    steps = (torch.arange(n, device=patches.device)[:, None] * stride
             + torch.arange(p, device=patches.device)).flatten()
    length = int(steps[-1]) + 1
    total = patches.new_zeros(*patches.shape[:-2], length).index_add_(-1, steps, patches.flatten(-2))
    count = torch.bincount(steps, minlength=length).to(patches.dtype)
    return (total / count)[..., :seq_len].transpose(1, 2)


class RevIN(nn.Module):
    """Reversible instance normalisation over the time axis of ``[B, L, V]`` (module docstring).
    :meth:`normalise` returns the statistics that :meth:`denormalise` takes back, so one module serves any number
    of calls in flight."""

    def __init__(self, num_variates: int, affine: bool = False, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_variates))
            self.bias = nn.Parameter(torch.zeros(num_variates))
        else:
            self.weight = self.bias = None

    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(x − μ) / σ`` (then ``· γ + β``), with ``μ, σ`` ``[B, 1, V]`` over the window: ``(x̂, (μ, σ))``."""
        mean = x.mean(1, keepdim=True).detach()
        std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        x = (x - mean) / std
        return (x * self.weight + self.bias, (mean, std)) if self.weight is not None else (x, (mean, std))

    def denormalise(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The inverse map on an output ``y [B, T, V]`` of any length: ``((y − β) / γ) · σ + μ``."""
        mean, std = stats
        if self.weight is not None:
            y = (y - self.bias) / (self.weight + self.eps ** 2)  # Kim et al.'s code: ε² keeps γ → 0 finite
        return y * std + mean


class PatchEmbedding(nn.Module):
    """``x [B, L, V]`` → tokens ``[B, V, N, dim]``: :func:`patchify`, ``Linear(patch_len, dim)``, + the optional
    variate embedding ``[V, dim]`` and token-index embedding ``[N, dim]`` (PatchTST's init ``U(−0.02, 0.02)``)."""

    def __init__(self, seq_len: int, num_variates: int, dim: int, patch_len: int, stride: int,
                 variate_embedding: bool = False, positional: bool = False):
        super().__init__()
        self.patch_len, self.stride = patch_len, stride
        self.value = nn.Linear(patch_len, dim)
        n = num_tokens(seq_len, patch_len, stride)
        self.variate = nn.Parameter(torch.empty(num_variates, 1, dim).uniform_(-0.02, 0.02)) \
            if variate_embedding else None
        self.position = nn.Parameter(torch.empty(n, dim).uniform_(-0.02, 0.02)) if positional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.value(patchify(x, self.patch_len, self.stride))
        if self.variate is not None:
            tokens = tokens + self.variate
        if self.position is not None:
            tokens = tokens + self.position
        return tokens
