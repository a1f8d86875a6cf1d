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

- ``mean`` (post-training caching, §3.4): the plain average of the online and the cached reads, without learnable
  weights — what a model trained without caching decodes with (:func:`enable_caching`, ``nestedmemory generate
  --caching_segment N``).

``init="checkpoint"`` continues the memory across segments (``M_0^{(s)} = M^{(s−1)}_{end}``, §3.4); ``"independent"``
restarts every segment from the layer's learned initial state (compressors, as TNT's local memories).
``pool="mean"``: the mean of the segment's layer inputs ``x`` (Eq. 10), one gate per token shared by the heads;
``"keys"``: the sum of each head's keys (Eq. 16; what the ``memory-caching`` package pools), one gate per head.

The online memory reads and writes through ``memorize``; the cached memories are read with ``recall`` (the same
memory function without a write), all cached states of a segment in one call on their stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..memory import MemoryRule, MemoryState, memorize, recall

AGGREGATIONS = ("residual", "gated", "soup", "sparse", "mean")
SEGMENTATIONS = ("constant", "log")
INITS = ("checkpoint", "independent")
UNGATED = ("residual", "mean")  # the aggregations without context gates
GATE_INPUTS = ("x", "q")
POOLS = ("mean", "keys")


@dataclass(frozen=True)
class Caching:
    """The options of Memory Caching (``MemoryMixer(caching=dict(...))``), checked against the memory's ``rule``.
    ``segment``: tokens per cached segment (default 4 memory chunks; a multiple of the chunk). ``top_k``: the cached
    segments SSC routes each token to (default 2). ``init``: ``"checkpoint"`` by default, ``"independent"`` (the
    only choice) with ``segmentation="log"``, whose Fenwick nodes are independent compressors."""

    segment: int | None = None
    aggregation: str = "gated"
    segmentation: str = "constant"
    init: str | None = None
    top_k: int | None = None
    gate_input: str = "x"
    pool: str = "mean"

    def checked(self, rule: MemoryRule) -> "Caching":
        log = self.segmentation == "log"
        init = ("independent" if log else "checkpoint") if self.init is None else self.init
        for name, value, options in (("aggregation", self.aggregation, AGGREGATIONS),
                                     ("segmentation", self.segmentation, SEGMENTATIONS),
                                     ("init", init, INITS), ("gate_input", self.gate_input, GATE_INPUTS),
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
        if log and init != "independent":
            raise ValueError("caching.init must be 'independent' with segmentation='log': its Fenwick nodes are "
                             "independent compressors")
        if rule.feature_map == "exp":
            raise ValueError("caching is not built for the exp kernel memory (its state grows with every write)")
        return Caching(segment, self.aggregation, self.segmentation, init, top_k, self.gate_input, self.pool)


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
    if options.aggregation == "mean":
        return (online + cached.sum(0)) / (cached.shape[0] + 1)
    if options.aggregation == "sparse" and cached.shape[0] > options.top_k:
        kept = cached_scores.topk(options.top_k, dim=0).indices
        mask = torch.zeros_like(cached_scores, dtype=torch.bool).scatter_(0, kept, True)
        cached_scores = cached_scores.masked_fill(~mask, float("-inf"))
    gamma = torch.softmax(torch.cat([cached_scores, online_score.unsqueeze(0)]), dim=0).unsqueeze(-1)
    return gamma[-1] * online + (gamma[:-1] * cached).sum(0)


def _pooled(total, count, options: Caching):
    """A segment's (or block's) pool from the sum of its ``count`` pooled tokens: their mean (``pool="mean"``,
    Eq. 10) or the sum itself (``"keys"``, Eq. 16)."""
    return total / count if options.pool == "mean" else total


def _concat(states: list[MemoryState], batch: int) -> MemoryState:
    """States at the same chunk offset (no Omega halo) as one state of ``len(states) · batch`` rows; a learnable
    initial state (``[H, in, out]``, no momentum yet) is broadcast over the batch."""
    def full(t):
        return t.expand(batch, *t.shape[-3:]) if t.dim() == 3 else t

    def cat(lists):
        return None if lists[0] is None else [torch.cat([full(t) for t in group]) for group in zip(*lists)]

    momenta = [None] if all(s.momentum is None for s in states) else \
        [[torch.zeros_like(full(w)) for w in s.weights] if s.momentum is None else s.momentum for s in states]
    return MemoryState(weights=cat([s.weights for s in states]), momentum=cat(momenta), offset=states[0].offset,
                       anchor=cat([s.anchor for s in states]), lag_acc=cat([s.lag_acc for s in states]),
                       lag_decay=None if states[0].lag_decay is None else torch.cat([s.lag_decay for s in states]))


def _split(state: MemoryState, n: int) -> list[MemoryState]:
    """:func:`_concat`'s inverse: ``n`` states of the batch's equal parts."""
    def part(tensors, i):
        return None if tensors is None else [t.chunk(n)[i] for t in tensors]
    return [MemoryState(weights=part(state.weights, i), momentum=part(state.momentum, i), offset=state.offset,
                        anchor=part(state.anchor, i), lag_acc=part(state.lag_acc, i),
                        lag_decay=None if state.lag_decay is None else state.lag_decay.chunk(n)[i])
            for i in range(n)]


def _stack(states: list[MemoryState]) -> MemoryState:
    """The cached (chunk-boundary) states as one, weights ``[N, B, H, in, out]``: one ``recall`` reads them all."""
    return MemoryState(weights=[torch.stack(w) for w in zip(*(s.weights for s in states))])


class MemoryCaching(nn.Module):
    """The caching of one :class:`~nestedmemory.layers.memory.MemoryMixer` (its ``caching`` option): the connector
    ``W_u`` of the gates (GRM / Soup / SSC with ``gate_input="x"``) and the segment-wise forward.

    The decoding cache entry holds the online state, the current segment's pooled sum ``[B, G, P]`` and position, and
    the ledger of the cached states and their pools (:class:`Segments` or :class:`Fenwick`), so that prefill + decode
    equals the full pass."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, rule: MemoryRule, caching):
        super().__init__()
        self.options = caching_options(caching, rule)
        self.heads, self.head_dim = num_heads, head_dim
        gated = self.options.aggregation not in UNGATED
        width = dim if self.options.pool == "mean" else num_heads * head_dim
        self.u_proj = nn.Linear(dim, width, bias=False) if gated and self.options.gate_input == "x" else None

    def _gate_vectors(self, q, k, x):
        """``(u, p)`` ``[B, T, G, P]``: the gate input and the tokens the segments pool."""
        if self.options.pool == "mean":
            return self.u_proj(x).unsqueeze(2), x.unsqueeze(2)
        u = q if self.u_proj is None else self.u_proj(x).unflatten(-1, (self.heads, self.head_dim))
        return u, k

    def mix(self, layer, q, k, v, x, cache, use_cache):
        """``MemoryMixer.mix`` with caching: the reads ``[B, T, H, Dv]`` and the new cache entry."""
        segment, options = self.options.segment, self.options
        if cache is None:
            cache = dict(memory=layer.initial_state(), prefix=None, position=0,
                         ledger=(Fenwick if options.segmentation == "log" else Segments)())
        online, prefix, position = cache["memory"], cache["prefix"], cache["position"]
        ledger = cache["ledger"].copy()
        gates = layer.gates(x)
        features = {name: gates[name] for name in ("feature_coeffs", "feature_scale") if name in gates}
        gated = options.aggregation not in UNGATED
        u, p = self._gate_vectors(q, k, x) if gated else (None, k)  # RM / mean pool nothing they use
        outs, start, length, online_score = [], 0, q.shape[1], None
        while start < length:
            stop = min(length, start + segment - position)
            piece = slice(start, stop)
            piece_gates = {name: g if name in ("feature_coeffs", "feature_scale") else g[:, piece]
                           for name, g in gates.items()}
            ends = position + stop - start == segment
            sums = p[:, piece].cumsum(1) + (0 if prefix is None else prefix.unsqueeze(1))
            prefix = sums[:, -1]
            cached, pools = ledger.readable()
            scores = None
            if gated and cached:
                counts = torch.arange(position + 1, position + stop - start + 1, device=q.device, dtype=q.dtype)
                online_score = (u[:, piece] * _pooled(sums, counts.view(1, -1, 1, 1), options)).sum(-1)
                scores = torch.einsum("btgp,nbgp->nbtg", u[:, piece], torch.stack(pools))
            soup = None
            if cached and options.aggregation == "soup":  # Eq. 14–15: the read of the interpolated memory
                gamma = torch.softmax(torch.cat([scores, online_score.unsqueeze(0)]), 0)
                gamma = gamma.expand(*gamma.shape[:-1], layer.heads)
                soup = (gamma[-1], _stack(cached), gamma[:-1])
            read, online = memorize(q[:, piece], k[:, piece], v[:, piece], layer.rule, initial_state=online,
                                    output_final_state=use_cache or ends, soup=soup, **piece_gates)
            if cached and soup is None:
                stacked = recall(q[:, piece], layer.rule, _stack(cached), **features)
                read = aggregate(options, read, stacked, scores, online_score)
            ledger.advance(layer, q[:, piece], k[:, piece], v[:, piece], piece_gates, p[:, piece])
            outs.append(read)
            position = position + stop - start
            if ends:
                online = ledger.finish(online, prefix, layer.initial_state, options)
                prefix, position = None, 0
            start = stop
        entry = dict(memory=online, prefix=prefix, position=position, ledger=ledger) if use_cache \
            else {"memory": None}
        return torch.cat(outs, 1), entry


@dataclass
class Segments:
    """Constant segmentation (MC §3.1): every finished segment's final state is cached, with its pool. A dataclass,
    so that the decoding cache's reorder / detach reach its tensors."""

    states: list = field(default_factory=list)
    pools: list = field(default_factory=list)

    def copy(self) -> "Segments":
        return Segments(list(self.states), list(self.pools))

    def readable(self):
        """The states every token of the current segment reads, and their pools ``[B, G, P]``."""
        return self.states, self.pools

    def advance(self, layer, q, k, v, gates, p) -> None:
        """Nothing but the online memory learns."""

    def finish(self, online, total, initial_state, options):
        """Cache the segment (``total``: its pooled tokens' sum); the next segment's online memory (checkpointed
        or restarted, §3.4)."""
        self.states.append(online)
        self.pools.append(_pooled(total, options.segment, options))
        return initial_state() if options.init == "independent" else online


@dataclass
class Fenwick:
    """Logarithmic segmentation (MC §4.2; log-linear attention's partition, Guo et al. 2025): a token of segment
    ``s`` reads the Fenwick nodes of ``s`` — for every set bit ``j`` of ``s`` the block of ``2^j`` segments before
    the lower bits (37 = 32 + 4 + 1: segments [0, 32), [32, 36), [36, 37)) — each an independent compressor (the
    memory run from its learned initial state over the block), beside the online memory of segment ``s``.

    Kept: ``nodes[j]`` the last finished level-``j`` block's state and pool (a token of segment ``s`` with bit ``j``
    set reads exactly that block, ``(s >> j) − 1``), the running compressor of the current level-``j`` block for
    ``1 ≤ j < J`` (``J`` = bit length of ``s``; level 0 is the online memory) and ``top``, the compressor that runs
    from the first token until its block ``[0, 2^J)`` finishes. Every token advances ``O(log s)`` compressors, the
    cost MC §4.2 gives; the same bookkeeping serves the full pass and decoding."""

    index: int = 0
    nodes: dict = field(default_factory=dict)
    running: list = field(default_factory=list)
    top: tuple | None = None

    def copy(self) -> "Fenwick":
        return Fenwick(self.index, dict(self.nodes), list(self.running), self.top)

    def readable(self):
        levels = [j for j in range(self.index.bit_length()) if self.index >> j & 1]
        return [self.nodes[j][0] for j in levels], [self.nodes[j][1] for j in levels]

    def advance(self, layer, q, k, v, gates, p) -> None:
        """The running compressors (levels ≥ 1, ``top``) learn the piece — in one ``memorize`` on their states
        stacked along the batch where the rule keeps no Omega window — and their pooled sums grow."""
        entries = self.running + ([self.top] if self.top is not None else [])
        if not entries:
            return
        n, states = len(entries), [state for state, _ in entries]
        if layer.rule.window == 1 and n > 1:
            rows = lambda t: t.repeat(n, *(1,) * (t.dim() - 1))  # noqa: E731
            batched = {name: g if name in ("feature_coeffs", "feature_scale") else rows(g) for name, g in gates.items()}
            _, final = memorize(rows(q), rows(k), rows(v), layer.rule, initial_state=_concat(states, q.shape[0]),
                                output_final_state=True, **batched)
            states = _split(final, n)
        else:
            states = [memorize(q, k, v, layer.rule, initial_state=state, output_final_state=True, **gates)[1]
                      for state in states]
        entries = [(state, pool + p.sum(1)) for state, (_, pool) in zip(states, entries)]
        if self.top is not None:
            self.top = entries.pop()
        self.running = entries

    def finish(self, online, total, initial_state, options):
        """Segment ``s`` ends (``total``: its pooled tokens' sum): finished blocks become nodes, their compressors
        restart; a new level opens at ``s + 1 = 2^J`` (the block ``[0, 2^J)`` is ``top``'s, which runs on)."""
        s, segment = self.index, options.segment
        self.nodes[0] = (online, _pooled(total, segment, options))
        zero = torch.zeros_like(total)
        for j, (state, block_total) in enumerate(self.running, start=1):
            if (s + 1) % 2 ** j == 0:
                self.nodes[j] = (state, _pooled(block_total, 2 ** j * segment, options))
                self.running[j - 1] = (initial_state(), zero)
        if self.top is None:  # segment 0: the compressor from the first token is the online memory so far
            self.top = (online, total)
        elif s + 1 == 2 ** s.bit_length():
            j = s.bit_length()
            state, top_total = self.top
            self.nodes[j] = (state, _pooled(top_total, 2 ** j * segment, options))
            self.running.append((initial_state(), zero))
        self.index = s + 1
        return initial_state()


def enable_caching(model, **options) -> int:
    """Post-training Memory Caching (MC §3.4): every memory layer of ``model`` without caching caches its memory
    every ``segment`` tokens and reads the average of the cached and online memories (``aggregation="mean"``, no
    learnable weights; other parameter-free options may be given). Returns the number of layers changed; raises
    ``ValueError`` for options a layer cannot take (e.g. a segment off its chunk grid) or a model with no such
    layer."""
    from .memory import MemoryMixer
    from .tnt import TNTMemory

    options = dict(dict(aggregation="mean"), **options)
    if options["aggregation"] not in UNGATED:
        raise ValueError(f"caching.aggregation={options['aggregation']!r} has weights to learn; post-training "
                         f"caching takes one of {list(UNGATED)}")
    layers = [m for m in model.modules() if isinstance(m, MemoryMixer) and not isinstance(m, TNTMemory)
              and m.caching is None]
    if not layers:
        raise ValueError("the model has no memory layer that can cache (MemoryMixer layers without caching; not "
                         "TNT's or self-modifying Titans')")
    for layer in layers:
        layer.caching = MemoryCaching(layer.q_proj.in_features, layer.heads, layer.head_dim, layer.rule, options)
    return len(layers)
