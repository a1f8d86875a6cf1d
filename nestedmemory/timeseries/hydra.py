"""Hydra-style 2-D test-time memory (Meskin, Mirrokni, Najar, Behrouz 2025, arXiv 2511.00989; only the abstract is
public — every equation below is this library's reading, docs/decisions.md "Hydra").

The abstract's three claims, built from the library's memory core (``layers.MemoryMixer`` → ``memory.memorize``;
no new memory): a **two-headed** memory — a *time head* per variate that learns along time and a *variate head* per
time step that learns along the variates (both ways: variates have no order) — with a **2-D recurrence** across
time and variates at each step, and a **2-D chunk-wise** training algorithm that approximates it.

For a cell (variate ``v``, time token ``t``) with input ``u[v,t]``::

    o_T[v,t]   = M_T,v( u[v,t] + o_V[v,t−1] )          time head: memorize along t (its own memory per variate)
    o_V[·,t]   = M_V→( u[·,t] + o_T[·,t] ) + flip(M_V←( flip(u[·,t] + o_T[·,t]) ))   variate heads along v
    y[v,t]     = o_T[v,t] + o_V[v,t]

The time head at ``t`` reads the variate heads' output at ``t − 1`` (Roesser's cross term ``Ā₂ h²_{v,t−1}``) and the
variate heads at ``t`` read the time head's output at ``t`` (``Ā₃ h¹``): ``o`` at ``(v, t)`` depends on every
variate at every earlier step, and the recurrence cannot be parallelised over time (the abstract's point). Each
head is a memory of this library: any ``lmm`` preset's rule — by default Titans' deep memory (``titans-lmm``);
``rule="memora"`` is the "exponentiated", KL-retained update (Miras Eq. 21) the abstract's contrast with additive
updates suggests, 3–4× slower on the CPU (docs/decisions.md).

Execution: time tokens are processed in tiles of ``time_chunk`` steps and the variate axis in memory chunks of
``variate_chunk``. Inside a tile the time head's cross input is the variate output at the tile's corner,
``o_V[v, t₀−1]``, and each memory takes its gradients at its chunk's start (Titans' mini-batch rule, SPEC §2.2),
so a tile is two chunk-parallel ``memorize`` calls. ``time_chunk = variate_chunk = 1`` is the exact 2-D recurrence
(:meth:`HydraMemory.exact`): one step per time token, every memory updated per cell.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..layers.cache import LayerStates
from ..layers.common import RMSNorm
from ..models import PRESETS, preset_config
from ..models.blocks import memory_layer
from ..models.cms import SwiGLU

#: the heads' default rule: Titans' memory (MLP, ℓ2 bias, decay, momentum; Titans §3.1).
DEFAULT_RULE = "titans-lmm"
#: ``variate`` option → number of variate heads: both directions (default), forward only, none (the ablation
#: without the variate direction: a channel-independent time memory).
VARIATE_HEADS = {"both": 2, "forward": 1, "none": 0}


def head_memory(dim: int, heads: int, preset: str, chunk_size: int):
    """One head of the 2-D memory: the :class:`~nestedmemory.layers.MemoryMixer` of the ``lmm`` preset ``preset``
    (its rule and gate settings) at width ``dim``, memory chunk ``chunk_size``."""
    if preset not in PRESETS or PRESETS[preset][0] != "lmm" or "caching" in (PRESETS[preset][1] or {}):
        choices = sorted(n for n, (arch, rule) in PRESETS.items() if arch == "lmm" and "caching" not in rule)
        raise ValueError(f"Hydra's memory rule must be a recurrent memory preset, one of {choices}; got {preset!r}")
    config = preset_config(preset, "tiny", hidden_size=dim, num_heads=heads,
                           memory=dict(PRESETS[preset][1], chunk_size=chunk_size))
    return memory_layer(config, 0)


class HydraMemory(nn.Module):
    """The two-headed 2-D memory mixer (module docstring): ``[B, V, N, D] → [B, V, N, D]``, causal in ``N``."""

    def __init__(self, dim: int, heads: int = 2, rule: str = DEFAULT_RULE, time_chunk: int = 4,
                 variate_chunk: int = 4, variate: str = "both"):
        super().__init__()
        for name, value in (("time_chunk", time_chunk), ("variate_chunk", variate_chunk), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Hydra's {name} must be an integer >= 1, got {value!r}")
        if variate not in VARIATE_HEADS:
            raise ValueError(f"Hydra's variate must be one of {list(VARIATE_HEADS)}, got {variate!r}")
        self.time_chunk, self.variate_chunk = time_chunk, variate_chunk
        self.time = head_memory(dim, heads, rule, time_chunk)
        self.variate = nn.ModuleList(head_memory(dim, heads, rule, variate_chunk)
                                     for _ in range(VARIATE_HEADS[variate]))

    def forward(self, u):
        b, v, n, d = u.shape
        if not self.variate:  # the ablation: a time memory per variate, nothing across variates
            return self.time(u.reshape(b * v, n, d))[0].view(b, v, n, d)
        cache, corner, out = LayerStates(), u.new_zeros(b, v, 1, d), []
        for t0 in range(0, n, self.time_chunk):
            tile = u[:, :, t0:t0 + self.time_chunk]
            c = tile.shape[2]
            o_time, _, cache = self.time((tile + corner).reshape(b * v, c, d), past_key_values=cache,
                                         use_cache=True)
            o_time = o_time.view(b, v, c, d)
            column = (tile + o_time).transpose(1, 2).reshape(b * c, v, d)  # each time step's variates, in order
            o_var = self.variate[0](column)[0]
            if len(self.variate) == 2:
                o_var = o_var + self.variate[1](column.flip(1))[0].flip(1)
            o_var = o_var.view(b, c, v, d).transpose(1, 2)
            corner = o_var[:, :, -1:]
            out.append(o_time + o_var)
        return torch.cat(out, dim=2)

    def chunks(self) -> tuple[int, int]:
        """``(time_chunk, variate_chunk)``."""
        return self.time_chunk, self.variate_chunk

    def set_chunks(self, time_chunk: int, variate_chunk: int) -> None:
        """Run the same parameters with other tiles: ``(1, 1)`` is the exact 2-D recurrence (the chunk sizes are
        the execution's, the gates and weights are shared; the memories' chunk is their gradient point)."""
        self.time_chunk, self.variate_chunk = time_chunk, variate_chunk
        self.time.rule = dataclasses.replace(self.time.rule, chunk_size=time_chunk)
        for head in self.variate:
            head.rule = dataclasses.replace(head.rule, chunk_size=variate_chunk)

    def exact(self) -> None:
        """Switch to the exact 2-D recurrence (``set_chunks(1, 1)``)."""
        self.set_chunks(1, 1)


class HydraBlock(nn.Module):
    """Pre-norm residual block: ``z + HydraMemory(norm(z))``, then ``+ SwiGLU(norm(z))``."""

    def __init__(self, dim: int, mlp_ratio: int = 2, **memory):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.memory = HydraMemory(dim, **memory)
        self.mlp = SwiGLU(dim, mlp_ratio * dim)

    def forward(self, z):
        z = z + self.memory(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class HydraBackbone(nn.Module):
    """``layers`` :class:`HydraBlock` over tokens ``[B, V, N, D]`` (the time-series backbone contract), then a
    final RMSNorm. ``num_variates`` is accepted for the common constructor and not needed (the memories run over
    any number of variates). Options: ``heads``, ``rule`` (an ``lmm`` preset), ``time_chunk``, ``variate_chunk``,
    ``variate`` (``both`` / ``forward`` / ``none``), ``mlp_ratio``."""

    def __init__(self, dim: int, num_variates: int, layers: int = 2, mlp_ratio: int = 2, **memory):
        super().__init__()
        self.blocks = nn.ModuleList(HydraBlock(dim, mlp_ratio, **memory) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def forward(self, tokens):
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def set_chunks(self, time_chunk: int, variate_chunk: int) -> None:
        """:meth:`HydraMemory.set_chunks` for every block."""
        for block in self.blocks:
            block.memory.set_chunks(time_chunk, variate_chunk)
