"""Sequence mixers for the global branch of a GSM layer (Behrouz et al., ICML 2025, arXiv 2411.15671, §3: the global
encoder Ψ is any sequence model): GPS's softmax attention with a key padding mask (Rampášek et al. 2022), any token
mixer of this library's presets (Titans, Miras, Atlas, Mamba2, Gated DeltaNet, TTT, …; GSM++ Fig. 3 sweeps such
encoders, TTT included) and GSM++'s hybrid block (SSM layers, then attention; §5).

A :class:`SequenceMixer` maps ``x [B, T, C]`` and ``mask [B, T]`` (``True`` = a real token; padding trails each
sequence, as ``torch_geometric.utils.to_dense_batch`` lays it out) to ``[B, T, C]``; outputs at padding are
meaningless. Attention masks the padding keys; a recurrent (causal) mixer never sees the trailing padding before a
real token, so its real outputs equal those of the sequence alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..layers import RMSNorm

__all__ = ["SequenceMixer", "Attention", "CausalMixer", "MixerStack", "library_mixer", "hybrid_mixer", "make_mixer"]


class SequenceMixer(nn.Module):
    """Base class of the mixers a GSM layer calls as ``mixer(x [B, T, C], mask [B, T]) → [B, T, C]``."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Attention(SequenceMixer):
    """GPS's global attention (Rampášek et al. 2022; PyG ``GPSConv``): ``torch.nn.MultiheadAttention`` over all the
    real tokens of a sequence (``key_padding_mask = ~mask``), without positions: permutation-equivariant."""

    def __init__(self, channels: int, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"attention heads must be >= 1 and divide channels={channels}, got {heads}")
        self.attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)

    def forward(self, x, mask):
        return self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)[0]


class CausalMixer(SequenceMixer):
    """A causal token mixer without a mask argument: ``module(x)`` returning ``[B, T, C]`` or, as this library's
    layers do, a tuple ``(out, None, cache)``. The trailing padding is after every real token, so a causal mixer's
    real outputs do not depend on it; a non-causal module must be a :class:`SequenceMixer` that reads the mask."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x, mask):
        out = self.module(x)
        return out[0] if isinstance(out, tuple) else out


class MixerStack(SequenceMixer):
    """Pre-norm residual mixers, as in this library's blocks without their MLP: ``h ← h + m_i(RMSNorm_i(h))``.
    Returns the update ``h − x`` (summed exactly), so the GSM layer's own residual adds ``x`` once; with one mixer
    that is ``m(RMSNorm(x))``."""

    def __init__(self, mixers: list[SequenceMixer], channels: int):
        super().__init__()
        self.mixers = nn.ModuleList(mixers)
        self.norms = nn.ModuleList(RMSNorm(channels) for _ in mixers)

    def forward(self, x, mask):
        h, update = x, 0
        for norm, mixer in zip(self.norms, self.mixers):
            out = mixer(norm(h), mask)
            h, update = h + out, update + out
        return update


def library_mixer(preset: str, channels: int, **overrides) -> MixerStack:
    """The token mixer(s) of preset ``preset`` (:data:`nestedmemory.models.PRESETS`) at width ``channels``: the
    mixers of its first ``num_layers`` blocks (default 1: e.g. the memory of ``titans-lmm`` / ``mamba2``, memory then
    sliding-window attention for ``titans-mal``; ``num_layers=2`` gives a Samba-style ``*-h`` preset both kinds) at
    the preset's ``tiny`` size (heads, memory chunk 8, window 4), as a :class:`MixerStack`. ``overrides``:
    :class:`~nestedmemory.models.NestedMemoryConfig` fields (``num_heads``, ``memory``, ``window``, …). The
    Continuum Memory System of ``hope`` / ``hope-attention`` replaces an MLP, not a mixer, and is left out. Every
    preset's mixer is causal."""
    from ..models import preset_config
    from ..models.blocks import block_mixers

    config = preset_config(preset, "tiny", **{"num_layers": 1, **overrides, "hidden_size": channels, "cms": None})
    mixers = [CausalMixer(m) for block in range(config.num_layers) for m in block_mixers(config, block)]
    return MixerStack(mixers, channels)


def hybrid_mixer(channels: int, heads: int = 1, ssm_layers: int = 2, ssm: str = "mamba2",
                 dropout: float = 0.0) -> MixerStack:
    """GSM++'s hybrid block (§5; NEXT-WAVE.md §4.2): ``ssm_layers`` recurrent layers (the library's ``mamba2``
    mixer, i.e. SSD: a decayed matrix memory, by default; any recurrent preset) then one attention layer
    (:class:`Attention`), pre-norm residual (:class:`MixerStack`). The recurrent layers bring the order (distance
    bias, counting), the attention global mixing. The Transformer layer's MLP is the GSM layer's own. Default 2 + 1
    as the public reproduction of GSM++."""
    if ssm_layers < 1:
        raise ValueError(f"hybrid ssm_layers must be >= 1, got {ssm_layers}")
    ssms = [library_mixer(ssm, channels) for _ in range(ssm_layers)]
    return MixerStack([*ssms, Attention(channels, heads, dropout)], channels)


#: mixer names besides the presets of :data:`nestedmemory.models.PRESETS`.
NAMED = ("attention", "hybrid")


def make_mixer(spec: str | Callable[[int], nn.Module], channels: int, heads: int = 1,
               dropout: float = 0.0) -> SequenceMixer:
    """A fresh mixer of width ``channels`` from ``spec``: ``"attention"`` (:class:`Attention`), ``"hybrid"``
    (:func:`hybrid_mixer`), a preset name (:func:`library_mixer`), or a callable ``channels → module`` (a
    :class:`SequenceMixer`, or a causal module wrapped in :class:`CausalMixer`). ``heads`` and ``dropout`` are the
    attention's."""
    from ..models import PRESETS

    if callable(spec):
        return as_sequence_mixer(spec(channels))
    if spec == "attention":
        return Attention(channels, heads, dropout)
    if spec == "hybrid":
        return hybrid_mixer(channels, heads, dropout=dropout)
    if spec in PRESETS:
        return library_mixer(spec, channels)
    raise ValueError(f"unknown mixer {spec!r}: choose one of {', '.join(NAMED)}, a preset "
                     f"({', '.join(sorted(PRESETS))}) or a callable channels -> module")


def as_sequence_mixer(module) -> SequenceMixer:
    """``module`` as a :class:`SequenceMixer`: itself, or a causal module wrapped in :class:`CausalMixer`."""
    if isinstance(module, SequenceMixer):
        return module
    if isinstance(module, nn.Module):
        return CausalMixer(module)
    raise ValueError(f"a mixer must be an nn.Module, got {type(module).__name__}")
