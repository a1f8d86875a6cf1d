"""Blocks: the Llama-style residual block and the Titans ways of combining memory with attention (SPEC §3.4, §10.3).

Every block is ``h ← h + mixer_i(RMSNorm_i(h))`` for its token mixers, then ``h ← h + SwiGLU(RMSNorm(h))``. The mixers
follow the layer protocol of :mod:`nestedmemory.layers` (``(out, None, past_key_values)``); each has its own entry in
the :class:`~nestedmemory.layers.LayerStates` cache, keyed ``2 · block + i``.

- ``memory``: the memory layer (Titans LMM, Miras, ATLAS, baselines).
- ``attention``: RoPE attention, global or sliding-window, with persistent tokens.
- :class:`MemoryAsGate` (MAG, Titans §4.2): SWA with persistent prefix ∥ memory, gated.
- :class:`MemoryAsContext` (MAC, Titans §4.1): segment attention over [persistent ∥ long-term ∥ segment].
- MAL (Titans §4.3) is a block with two mixers, memory then SWA (H3-like).
- :class:`PersistentMemory`: the memory of MAG / MAL over ``[p] ∥ x`` (Titans Eq. 26-30).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import Attention, LayerStates, MemoryMixer, RMSNorm, SelfModifyingTitans, left_aligned
from ..layers.common import padded_output, residual_output
from .cms import ContinuumMemory, SwiGLU
from .config import NestedMemoryConfig


class GatedCombine(nn.Module):
    """Titans' ``o = y ⊗ M(x)`` (§4.1 Eq. 25, §4.2): "normalize the outputs y and M(x̃) using learnable vector-valued
    weights, followed by a non-linearity σ(.)" — here ``o = W_o(RMSNorm_a(y) ⊙ sigmoid(RMSNorm_b(m)))``: the memory
    gates the attention output channel by channel."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm_y, self.norm_m = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.o_proj = residual_output(nn.Linear(dim, dim, bias=False))

    def forward(self, y, m):
        return self.o_proj(self.norm_y(y) * torch.sigmoid(self.norm_m(m)))


def memory_layer(config: NestedMemoryConfig, layer_idx: int) -> MemoryMixer | SelfModifyingTitans:
    """The memory mixer of ``config.architecture`` (:class:`MemoryMixer`, its :class:`TNTMemory` extension, or
    :class:`SelfModifyingTitans`)."""
    return config.memory_class(config.hidden_size, config.memory_heads, config.memory_head_dim, layer_idx=layer_idx,
                       **config.memory_layer_kwargs())


class PersistentMemory(nn.Module):
    """The memory of MAG / MAL over ``x̃ = [p_1 … p_Np] ∥ x`` (Titans Eq. 26-30): ``N_p`` learnable hidden-space
    tokens ``p``, drawn ``N(0, 1)`` like the normalised input they precede, are written before ``x`` and their
    outputs dropped. The memory's chunk grid runs over ``x̃`` (it starts at ``p_1``), so the output is exactly
    ``memory(x̃)[:, N_p:]``. The state after ``p`` (memory and conv window) is a function of the parameters only: it
    is computed whenever a sequence starts (no cache entry yet), and the cache entry is the memory's own, so
    decoding equals the full pass."""

    def __init__(self, memory: MemoryMixer, persistent_tokens: int, dim: int):
        super().__init__()
        self.memory, self.layer_idx = memory, memory.layer_idx
        self.persistent = nn.Parameter(torch.randn(persistent_tokens, dim))

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        entry = None if past_key_values is None else past_key_values[self.layer_idx]
        padded = padded_output(self, hidden_states, attention_mask, entry, use_cache)
        if padded is not None:
            return padded, None, past_key_values
        if entry is None:  # a sequence starts: the memory writes p
            p = self.persistent.expand(hidden_states.shape[0], -1, -1)
            entry = self.memory(p, use_cache=True)[2][self.layer_idx]
        inner = LayerStates()  # the caller's cache changes only with use_cache
        inner.update(self.layer_idx, entry)
        out, _, inner = self.memory(hidden_states, past_key_values=inner, use_cache=use_cache)
        if use_cache:
            past_key_values = LayerStates() if past_key_values is None else past_key_values
            past_key_values.update(self.layer_idx, inner[self.layer_idx])
        return out, None, past_key_values


def memory_with_persistent(config: NestedMemoryConfig, layer_idx: int) -> MemoryMixer | PersistentMemory:
    """The memory of MAG / MAL: over ``[p] ∥ x`` (:class:`PersistentMemory`) with ``config.memory_persistent`` and
    persistent tokens, else over ``x`` alone (earlier versions)."""
    memory = memory_layer(config, layer_idx)
    if config.memory_persistent and config.persistent_tokens:
        return PersistentMemory(memory, config.persistent_tokens, config.hidden_size)
    return memory


def attention_layer(config: NestedMemoryConfig, layer_idx: int, window: int | None) -> Attention:
    return Attention(config.hidden_size, config.num_heads, config.head_dim, config.num_kv_heads, window=window,
                     persistent_tokens=config.persistent_tokens, rope_theta=config.rope_theta, layer_idx=layer_idx)


class MemoryAsGate(nn.Module):
    """MAG (Titans §4.2, Eq. 26-28, Fig. 4): ``y = SW-Attn*([p] ∥ x)`` and the memory ``M([p] ∥ x)`` read the same
    normalised input in parallel; ``o = W_o(RMSNorm_a(y) ⊙ σ(RMSNorm_b(M(x̃))))`` (:class:`GatedCombine`). The
    attention holds its persistent tokens as learnable keys/values, the memory its own as hidden-space tokens
    (:class:`PersistentMemory`; with ``memory_persistent=False`` the memory reads ``x`` alone)."""

    def __init__(self, config: NestedMemoryConfig, layer_idx: int):
        super().__init__()
        self.attention = attention_layer(config, layer_idx, config.window)
        self.memory = memory_with_persistent(config, layer_idx + 1)
        self.combine = GatedCombine(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        y, _, past_key_values = self.attention(hidden_states, attention_mask, past_key_values, use_cache)
        m, _, past_key_values = self.memory(hidden_states, attention_mask, past_key_values, use_cache)
        return self.combine(y, m), None, past_key_values


class MemoryAsContext(nn.Module):
    """MAC (Titans §4.1, Eq. 21-25, Fig. 2): the sequence is cut into segments of ``C = segment_size`` tokens; for
    the segment ``S``:

    1. ``h = M*_{t−1}(q)``: the memory as the previous segments left it is read without a write
       (:meth:`MemoryMixer.read`) at ``q = S W_Q``, the segment's own tokens (Eq. 21, ``mac_queries="segment"``) —
       or, with ``mac_queries="learned"`` (earlier versions), once per segment at ``longterm_tokens`` learned query
       tokens;
    2. ``y = Attn([p] ∥ h ∥ S)``: full causal attention inside the segment, behind the persistent tokens ``p``
       (Eq. 22-23; the attention restarts at every segment). ``h_i`` is read at ``S_i``, so the query ``S_j`` sees
       ``h_i`` and ``S_i`` for ``i ≤ j`` only: the attention runs causally over the interleaved
       ``[h_0, S_0, h_1, S_1, …]``, at the RoPE positions of ``[h ∥ S]`` (``h_i`` at ``i``, ``S_i`` at ``C + i``),
       and its outputs at ``S`` are kept. Learned queries' ``h`` precedes the segment and is seen by all of it;
    3. the memory writes ``y`` token by token and reads it back, ``M_t(y_t)`` (Eq. 24);
    4. ``o = y ⊗ M_t(y)`` with :class:`GatedCombine` (Eq. 25).

    The memory runs over the whole stream of ``y`` (its chunk grid continues across segments). The cache entry holds
    the inner mixers' states, the number of tokens seen and ``M_{t−1}``, the memory at the segment's start (the
    attention's cache never exceeds ``2C``, or ``N_l + C`` with learned queries); decoding equals the full pass."""

    def __init__(self, config: NestedMemoryConfig, layer_idx: int):
        super().__init__()
        self.segment, self.layer_idx = config.segment_size, layer_idx
        self.attention = attention_layer(config, 0, window=None)
        self.memory = memory_layer(config, 1)
        self.queries = None if config.mac_queries == "segment" else nn.Parameter(
            config.initializer_range * torch.randn(config.longterm_tokens, config.hidden_size))
        self.combine = GatedCombine(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        t = hidden_states.shape[1]
        entry = past_key_values[self.layer_idx] if past_key_values is not None else None
        if attention_mask is not None and not bool(attention_mask[:, -t:].all()):
            if use_cache or entry is not None:
                raise NotImplementedError("MAC does not support padded batches with a decoding cache; generate one "
                                          "sequence (or equal-length sequences) at a time")
            return left_aligned(self, hidden_states, attention_mask[:, -t:].to(hidden_states)), None, past_key_values
        inner, seen, memory = LayerStates(), 0, None
        if entry is not None:  # a copy: the caller's cache changes only with use_cache
            inner.states, seen, memory = dict(entry["inner"].states), entry["seen"], entry["memory"]
        outs, start = [], 0
        while start < t:
            offset = seen % self.segment
            piece = hidden_states[:, start:start + min(self.segment - offset, t - start)]
            if offset == 0:  # a new segment: fresh attention; M_{t−1}, the memory the previous segments left
                inner.update(0, None)
                memory = self.memory.memory_state(inner)
            y = self.attend(piece, offset, memory, inner)
            m = self.memory(y, past_key_values=inner, use_cache=True)[0]
            outs.append(self.combine(y, m))
            start, seen = start + piece.shape[1], seen + piece.shape[1]
        if use_cache:
            past_key_values = LayerStates() if past_key_values is None else past_key_values
            past_key_values.update(self.layer_idx, {"inner": inner, "seen": seen, "memory": memory})
        return torch.cat(outs, 1), None, past_key_values

    def attend(self, piece, offset, memory, inner):
        """``y = Attn([p] ∥ h ∥ S)`` (Eq. 21-23) at ``piece``, the segment's tokens from its ``offset``-th on, with
        ``memory`` = ``M_{t−1}`` and ``inner`` holding the attention's cache of the segment so far."""
        b, n, _ = piece.shape
        if self.queries is None:  # h_i = M*_{t−1}(S_i W_Q), interleaved: [h_i, S_i] for each i
            i = torch.arange(offset, offset + n, device=piece.device)
            pairs = torch.stack((self.memory.read(piece, memory), piece), 2).flatten(1, 2)
            y = self.attention(pairs, past_key_values=inner, use_cache=True,
                               positions=torch.stack((i, self.segment + i), 1).flatten())[0]
            return y[:, 1::2]
        if offset == 0 and len(self.queries):
            piece = torch.cat((self.memory.read(self.queries.expand(b, -1, -1), memory), piece), 1)
        return self.attention(piece, past_key_values=inner, use_cache=True)[0][:, -n:]


def block_mixers(config: NestedMemoryConfig, block_idx: int) -> list[nn.Module]:
    """The token mixers of block ``block_idx`` for ``config.architecture`` (cache keys ``2 · block_idx + i``)."""
    idx, arch = 2 * block_idx, config.architecture
    if arch in ("lmm", "hope", "tnt") or (arch == "hybrid" and block_idx % 2 == 0):
        return [memory_layer(config, idx)]
    if arch in ("hybrid", "transformer"):
        return [attention_layer(config, idx, config.window)]
    if arch == "mag":
        return [MemoryAsGate(config, idx)]
    if arch == "mac":
        return [MemoryAsContext(config, idx)]
    return [memory_with_persistent(config, idx), attention_layer(config, idx + 1, config.window)]  # mal


class Block(nn.Module):
    """``h ← h + mixer_i(RMSNorm_i(h))`` for each mixer, then ``h ← h + SwiGLU(RMSNorm(h))`` — or, with
    ``config.cms``, ``h ← h + CMS(RMSNorm(h)) − RMSNorm(h)`` (:class:`~nestedmemory.models.cms.ContinuumMemory`,
    reading the fast weights ``fast_weights``)."""

    def __init__(self, config: NestedMemoryConfig, block_idx: int):
        super().__init__()
        self.mixers = nn.ModuleList(block_mixers(config, block_idx))
        self.norms = nn.ModuleList(RMSNorm(config.hidden_size, config.rms_norm_eps) for _ in self.mixers)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = (SwiGLU(config.hidden_size, config.intermediate_size) if config.cms is None
                    else ContinuumMemory(config.hidden_size, config.intermediate_size, **config.cms))

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, fast_weights=None):
        for norm, mixer in zip(self.norms, self.mixers):
            out, _, past_key_values = mixer(norm(hidden_states), attention_mask, past_key_values, use_cache)
            hidden_states = hidden_states + out
        x = self.mlp_norm(hidden_states)
        return hidden_states + (self.mlp(x) if fast_weights is None else self.mlp(x, fast_weights)), past_key_values
