"""TSM2, MambaMixer's time-series model (Behrouz, Santacatterina, Zabih 2024, arXiv 2403.19888 §3; equations as
read in ../shared/DATA.md §5.1, choices in docs/decisions.md "TSM2").

Each layer ``ℓ = 1 … L`` is a **Selective Token Mixer** (a Mamba block along time per variate: uni-directional,
causal) then a **Selective Channel Mixer** (the same block along the variates per time token, bidirectional: a
forward and a flipped-variate direction, summed). Both are :class:`~.chimera.SelectiveMixer` around
:class:`~.chimera.Chimera2DSSM` with one of its two states switched off (one equation in one place). Their inputs
are DenseFormer-style weighted averages of every earlier output, with learnable α, β, θ, γ::

    x_Token^(ℓ)   = Σ_{i<ℓ} α_{ℓ,i} y_Token^(i) + Σ_{i<ℓ} β_{ℓ,i} y_Channel^(i)
    x_Channel^(ℓ) = Σ_{i≤ℓ} θ_{ℓ,i} y_Token^(i) + Σ_{i<ℓ} γ_{ℓ,i} y_Channel^(i)
    y_Token^(ℓ) = TokenMixer_ℓ(x_Token^(ℓ)),  y_Channel^(ℓ) = ChannelMixer_ℓ(x_Channel^(ℓ)),  y^(0) = x

The weights start one-hot on the latest output (``β_{ℓ,ℓ−1} = θ_{ℓ,ℓ} = 1``, DenseFormer's identity start): at
initialisation the model is the plain stack token → channel → token → …. Each mixer is a pre-norm residual block
with the 2-D normalisation: RMS over the (variate, feature) plane of each time token with a gain per (variate,
feature), which — unlike a norm over (time, feature) — keeps the backbone causal in time.
"""

from __future__ import annotations

import torch
from torch import nn

from .chimera import SelectiveMixer, check_tokens


class Norm2D(nn.Module):
    """``x / rms_{V,D}(x) · g[V, D]`` for ``x [B, V, N, D]``: one statistic per (batch, time token)."""

    def __init__(self, num_variates: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_variates, 1, dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean((1, 3), keepdim=True) + self.eps)
        return (x * self.weight.to(x.dtype)).to(dtype)


class MixerBlock(nn.Module):
    """``u + Mixer(Norm2D(u))``."""

    def __init__(self, dim: int, num_variates: int, dropout: float, **mixer_options):
        super().__init__()
        self.norm = Norm2D(num_variates, dim)
        self.mixer = SelectiveMixer(dim, **mixer_options)
        self.drop = nn.Dropout(dropout)

    def forward(self, u):
        return u + self.drop(self.mixer(self.norm(u)))


def _one_hot(n: int, index: int):
    return nn.Parameter(torch.zeros(n).index_fill_(0, torch.tensor(index), 1.0))


class TSM2Backbone(nn.Module):
    """``layers`` token + channel mixer pairs with weighted averaging (module docstring) and a final
    :class:`Norm2D`: ``[B, V, N, D] → [B, V, N, D]``, causal in ``N``.

    Options (defaults in brackets): ``expand`` [2], ``head_dim`` [16], ``state_size`` [16], ``conv_size`` [4],
    ``dropout`` [0], ``dt_range`` [(1e-3, 1e-1)] (initial Δ of both mixers, Mamba's), ``selective`` [True],
    ``a_init``, ``mode``, ``chunk_size`` (:class:`~.chimera.Chimera2DSSM`'s)."""

    def __init__(self, dim: int, num_variates: int, layers: int, *, dropout: float = 0.0, dt_range=(1e-3, 1e-1),
                 **options):
        super().__init__()
        self.num_variates = num_variates
        self.token = nn.ModuleList(
            MixerBlock(dim, num_variates, dropout, axes=("time",), coupling=False, bidirectional=False,
                       conv_axis="time", time_dt=[dt_range], **options) for _ in range(layers))
        self.channel = nn.ModuleList(
            MixerBlock(dim, num_variates, dropout, axes=("variate",), coupling=False, bidirectional=True,
                       conv_axis="variate", variate_dt=dt_range, **options) for _ in range(layers))
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(layer)) for layer in range(1, layers + 1))
        self.beta = nn.ParameterList(_one_hot(layer, layer - 1) for layer in range(1, layers + 1))
        self.theta = nn.ParameterList(_one_hot(layer + 1, layer) for layer in range(1, layers + 1))
        self.gamma = nn.ParameterList(nn.Parameter(torch.zeros(layer)) for layer in range(1, layers + 1))
        self.norm = Norm2D(num_variates, dim)

    def forward(self, tokens):
        check_tokens(tokens, self.num_variates)
        y_token, y_channel = [tokens], [tokens]
        for token, channel, alpha, beta, theta, gamma in zip(self.token, self.channel, self.alpha, self.beta,
                                                             self.theta, self.gamma):
            x_token = _weighted(alpha, y_token) + _weighted(beta, y_channel)
            y_token.append(token(x_token))
            x_channel = _weighted(theta, y_token) + _weighted(gamma, y_channel)
            y_channel.append(channel(x_channel))
        return self.norm(y_channel[-1])


def _weighted(weights, outputs):
    """``Σ_i w_i y^(i)`` over the first ``len(w)`` outputs."""
    return sum(w * y for w, y in zip(weights, outputs))
