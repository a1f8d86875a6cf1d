"""Memory Caching (Behrouz et al., arXiv 2602.24281; SPEC §9): a recurrent memory that grows with the context.

The sequence is cut into segments of ``segment`` tokens (a multiple of the memory's chunk, so every boundary lies on
the chunk grid). Inside segment ``s`` the memory learns as always (``memorize``, Eq. 4); at its end the state is
cached, and every later token reads the cached memories beside the online one (Eq. 5):

- ``residual`` (RM, Eq. 6–7): ``y_t = M_t^{(s)}(q_t) + Σ_{i<s} M^{(i)}(q_t)``;
- ``gated`` (GRM, Eq. 8–10): ``y_t = Σ_{i≤s} γ_t^{(i)} M^{(i)}(q_t)``, ``γ_t = softmax_i ⟨u_t, pool(S^{(i)})⟩``,
  ``u_t = x_t W_u`` (or ``q_t``); the online term pools the current segment's tokens **up to t only** (a prefix
  mean): pooling the whole segment would leak the future into ``γ_t^{(s)}``;
- ``soup`` (Eq. 14–15): the parameters interpolated with the same ``γ`` — the online memory's ``W_t`` of every
  token with the cached ones — then read (``memorize``'s ``soup``: inside the chunk-parallel read, each layer's
  ``h θ*_t`` is ``γ_t (h W_t) + Σ_n γ_{t,n} (h W^{(n)})``); equal to GRM for a matrix memory, not for a deep one;
- ``sparse`` (SSC, Eq. 16–17): the router keeps the ``top_k`` cached segments of largest ``⟨u_t, pool⟩`` and the
  softmax runs over them and the online memory.

``init="checkpoint"`` continues the memory across segments (``M_0^{(s)} = M^{(s−1)}_{end}``, §3.4); ``"independent"``
restarts every segment from the layer's learned initial state (compressors, as TNT's local memories).
``pool="mean"``: the mean of the segment's layer inputs ``x`` (Eq. 10), one gate per token shared by the heads;
``"keys"``: the sum of each head's keys (Eq. 16; what the ``memory-caching`` package pools), one gate per head.

The online memory reads and writes through ``memorize``; the cached memories are read with ``recall`` (the same
memory function without a write), all cached states of a segment in one call on their stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..memory import MemoryRule, MemoryState, memorize, recall

AGGREGATIONS = ("residual", "gated", "soup", "sparse")
SEGMENTATIONS = ("constant",)
INITS = ("checkpoint", "independent")
GATE_INPUTS = ("x", "q")
POOLS = ("mean", "keys")


@dataclass(frozen=True)
class Caching:
    """The options of Memory Caching (``MemoryMixer(caching=dict(...))``), checked against the memory's ``rule``.
    ``segment``: tokens per cached segment (default 4 memory chunks; a multiple of the chunk). ``top_k``: the cached
    segments SSC routes each token to (default 2)."""

    segment: int | None = None
    aggregation: str = "gated"
    segmentation: str = "constant"
    init: str = "checkpoint"
    top_k: int | None = None
    gate_input: str = "x"
    pool: str = "mean"

    def checked(self, rule: MemoryRule) -> "Caching":
        for name, value, options in (("aggregation", self.aggregation, AGGREGATIONS),
                                     ("segmentation", self.segmentation, SEGMENTATIONS),
                                     ("init", self.init, INITS), ("gate_input", self.gate_input, GATE_INPUTS),
                                     ("pool", self.pool, POOLS)):
            if value not in options:
                raise ValueError(f"caching.{name}={value!r} is not supported; choose one of {list(options)}")
        segment = 4 * rule.chunk_size if self.segment is None else self.segment
        if not isinstance(segment, int) or isinstance(segment, bool) or segment < 1 or segment % rule.chunk_size:
            raise ValueError(f"caching.segment must be a positive multiple of the memory's chunk_size "
                             f"({rule.chunk_size}), got {self.segment!r}")
        top_k = self.top_k
        if self.aggregation == "sparse":
            top_k = 2 if top_k is None else top_k
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise ValueError(f"caching.top_k must be an integer >= 1, got {self.top_k!r}")
        elif top_k is not None:
            raise ValueError(f"caching.top_k is SSC's (aggregation='sparse'), got it with {self.aggregation!r}")
        if self.gate_input == "q" and self.pool != "keys":
            raise ValueError("caching.gate_input='q' scores the heads' queries against pooled keys: it needs "
                             "pool='keys'")
        if rule.feature_map == "exp":
            raise ValueError("caching is not built for the exp kernel memory (its state grows with every write)")
        return Caching(segment, self.aggregation, self.segmentation, self.init, top_k, self.gate_input, self.pool)


def caching_options(caching, rule: MemoryRule) -> Caching:
    """``caching`` (a dict or :class:`Caching`) checked; unknown keys are named."""
    if isinstance(caching, Caching):
        return caching.checked(rule)
    if not isinstance(caching, dict):
        raise ValueError(f"caching must be a dict of Memory Caching options, got {type(caching).__name__}")
    try:
        return Caching(**caching).checked(rule)
    except TypeError as error:
        raise ValueError(f"caching: {error}") from error


def aggregate(options: Caching, online, cached, cached_scores, online_score):
    """``y_t`` from the online read ``[B, T, H, Dv]``, the cached reads ``[N, B, T, H, Dv]`` and the gate scores
    ``[N, B, T, G]`` / ``[B, T, G]`` (``G`` = 1 or H): RM sums the reads; GRM weights them by the softmax of the
    scores (Eq. 10); SSC first keeps each token's ``top_k`` cached scores (Eq. 17)."""
    if options.aggregation == "residual":
        return online + cached.sum(0)
    if options.aggregation == "sparse" and cached.shape[0] > options.top_k:
        kept = cached_scores.topk(options.top_k, dim=0).indices
        mask = torch.zeros_like(cached_scores, dtype=torch.bool).scatter_(0, kept, True)
        cached_scores = cached_scores.masked_fill(~mask, float("-inf"))
    gamma = torch.softmax(torch.cat([cached_scores, online_score.unsqueeze(0)]), dim=0).unsqueeze(-1)
    return gamma[-1] * online + (gamma[:-1] * cached).sum(0)


def _stack(states: list[MemoryState]) -> MemoryState:
    """The cached (chunk-boundary) states as one, weights ``[N, B, H, in, out]``: one ``recall`` reads them all."""
    return MemoryState(weights=[torch.stack(w) for w in zip(*(s.weights for s in states))])


class MemoryCaching(nn.Module):
    """The caching of one :class:`~nestedmemory.layers.memory.MemoryMixer` (its ``caching`` option): the connector
    ``W_u`` of the gates (GRM / Soup / SSC with ``gate_input="x"``) and the segment-wise forward.

    The decoding cache entry holds the online state, the cached states, their pooled summaries ``[B, N, G, P]``, the
    current segment's pooled sum ``[B, G, P]`` and its position, so that prefill + decode equals the full pass."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, rule: MemoryRule, caching):
        super().__init__()
        self.options = caching_options(caching, rule)
        self.heads, self.head_dim = num_heads, head_dim
        gated = self.options.aggregation != "residual"
        width = dim if self.options.pool == "mean" else num_heads * head_dim
        self.u_proj = nn.Linear(dim, width, bias=False) if gated and self.options.gate_input == "x" else None

    def _gate_vectors(self, q, k, x):
        """``(u, p)`` ``[B, T, G, P]``: the gate input and the tokens the segments pool."""
        if self.options.pool == "mean":
            return self.u_proj(x).unsqueeze(2), x.unsqueeze(2)
        u = q if self.u_proj is None else self.u_proj(x).unflatten(-1, (self.heads, self.head_dim))
        return u, k

    def mix(self, layer, q, k, v, x, real, cache, use_cache):
        """``MemoryMixer.mix`` with caching: the reads ``[B, T, H, Dv]`` and the new cache entry."""
        segment = self.options.segment
        if cache is None:
            cache = dict(memory=layer.initial_state(), cached=[], pools=None, prefix=None, position=0)
        online, cached, pools = cache["memory"], list(cache["cached"]), cache["pools"]
        prefix, position = cache["prefix"], cache["position"]
        gates = layer.gates(x, real)
        features = {name: gates[name] for name in ("feature_coeffs", "feature_scale") if name in gates}
        gated = self.options.aggregation != "residual"
        u, p = self._gate_vectors(q, k, x) if gated else (None, None)
        outs, start, length, online_score = [], 0, q.shape[1], None
        while start < length:
            if position == 0 and cached and self.options.init == "independent":
                online = layer.initial_state()
            stop = min(length, start + segment - position)
            piece = slice(start, stop)
            piece_gates = {name: g if name in ("feature_coeffs", "feature_scale") else g[:, piece]
                           for name, g in gates.items()}
            ends = position + stop - start == segment
            if gated:
                sums = p[:, piece].cumsum(1) + (0 if prefix is None else prefix.unsqueeze(1))
                counts = torch.arange(position + 1, position + stop - start + 1, device=q.device, dtype=q.dtype)
                pooled = sums / counts.view(1, -1, 1, 1) if self.options.pool == "mean" else sums
                online_score = (u[:, piece] * pooled).sum(-1)
                prefix = sums[:, -1]
            scores = torch.einsum("btgp,bngp->nbtg", u[:, piece], pools) if gated and cached else None
            soup = None
            if cached and self.options.aggregation == "soup":  # Eq. 14–15: the read of the interpolated memory
                gamma = torch.softmax(torch.cat([scores, online_score.unsqueeze(0)]), 0)
                gamma = gamma.expand(*gamma.shape[:-1], layer.heads)
                soup = (gamma[-1], _stack(cached), gamma[:-1])
            read, online = memorize(q[:, piece], k[:, piece], v[:, piece], layer.rule, initial_state=online,
                                    output_final_state=use_cache or ends, soup=soup, **piece_gates)
            if cached and soup is None:
                stacked = recall(q[:, piece], layer.rule, _stack(cached), **features)
                read = aggregate(self.options, read, stacked, scores, online_score)
            outs.append(read)
            position = position + stop - start
            if ends:
                cached.append(online)
                if gated:
                    pool = (prefix / segment if self.options.pool == "mean" else prefix).unsqueeze(1)
                    pools = pool if pools is None else torch.cat([pools, pool], 1)
                    prefix = None
                position = 0
            start = stop
        entry = dict(memory=online, cached=cached, pools=pools, prefix=prefix, position=position) \
            if use_cache else {"memory": None}
        return torch.cat(outs, 1), entry
