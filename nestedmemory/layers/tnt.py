"""TNT's hierarchical memory (Li, Behrouz et al., "TNT: Improving Chunkwise Training for Test-Time Memorization",
arXiv 2511.07343; SPEC §7): one global memory with a large chunk plus ``N`` local memories with small chunks that
are reset to a learned state every shard, read through the Q-K projection.

With ``ξ(t, C) = t − (t mod C)`` (the start of the size-``C`` chunk holding ``t``):

- Global memory ``V`` (Eq. 5), chunk ``C_G``, carried over the whole sequence:
  ``V_{(n+1)C_G} = V_{nC_G} − Σ_{t ∈ chunk n} η_t ∇_V L(f(V_{nC_G}, k_t), v_t)`` — the memory core's chunkwise update
  with ``chunk_size = C_G`` (its gates, momentum and retention included).
- Local memories ``W^{(i)}`` (Eq. 6 / 14), chunk ``C_{L,i}``, reset to the learnable ``W_init^{(i)}`` whenever
  ``t ≡ 0 (mod S_{L,i})``: the chunkwise update of Eq. 3 with anchor ``W_{ξ(t, C_{L,i})}``. A shard never sees
  another shard's tokens, so the shards of a sequence are folded into the batch and run in parallel.
- Retrieval (Eq. 7 / 15): ``o_t = f(V_{ξ(t, C_G)}, q_t) + Σ_i f(W_t^{(i)}, q̃_t^{(i)})`` with the Q-K projector
  ``M_t^{(i)} = Σ_{τ in t's shard, τ ≤ t} k_τ k_τᵀ / ‖k_τ‖²`` (App. C: a running sum reset at every shard boundary;
  keys are ℓ2-normalised, so the denominator is 1) and the projected query ``q̃_t = ℓ2(M_t q_t)`` (default,
  ``qk_projection="normalized"``) or ``M_t q_t`` as printed (``"sum"``). ``M_t`` is the projector onto the keys'
  span only while the keys are orthonormal; past ``D`` keys the sum counts the span ≈ ``n/D`` times over, so the
  printed query grows with the position in the shard (‖M_t q_t‖ ≈ 31 at position 2,047 for D = 64) while the keys
  the memory was written with have norm 1 — ℓ2-normalising keeps the direction and reads at the keys' scale, the
  domain match the projection exists for (TNT's compression / retrieval mismatch, SPEC §7.1; docs/decisions.md).
  The global memory is read *before* the writes of the chunk holding ``t`` (its chunk-start state), each local
  memory after the write of ``t`` (``o_t = f(W_t, ·)``, Eq. 4).

Stage 2 (TNT §3.3) fine-tunes with smaller local chunks: :meth:`TNTMemory.set_local_chunk_sizes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from ..memory import MemoryRule, memorize, recall
from .memory import MemoryMixer, RuleParameters

#: token block of the chunk-parallel Q-K projector (any size gives the same result).
PROJECTOR_BLOCK = 64
#: the local memories' query: ``ℓ2(M_t q_t)`` or the printed ``M_t q_t`` (Eq. 7 / 15).
QK_PROJECTIONS = ("normalized", "sum")


def check_local_sizes(local_chunk_sizes, shard_sizes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(C_{L,i}, S_{L,i})`` as tuples; one shard size applies to every local memory. Each ``C_{L,i}`` must divide
    its ``S_{L,i}``: the shard's chunk grid is then the sequence's grid ``ξ(t, C_{L,i})`` of Eq. 6, and no chunk
    straddles a reset."""
    chunks = _positive_ints("local_chunk_sizes", local_chunk_sizes)
    shards = _positive_ints("shard_sizes", shard_sizes)
    if len(shards) == 1:
        shards = shards * len(chunks)
    if len(shards) != len(chunks):
        raise ValueError(f"shard_sizes has {len(shards)} entries for {len(chunks)} local_chunk_sizes")
    for c, s in zip(chunks, shards):
        if s % c:
            raise ValueError(f"local_chunk_sizes entry {c} must divide its shard_sizes entry {s}")
    return chunks, shards


def _positive_ints(name, values) -> tuple[int, ...]:
    values = (values,) if isinstance(values, int) else tuple(values) if isinstance(values, Sequence) else None
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"{name} must be an integer >= 1 or a non-empty sequence of them, got {values!r}")
    return values


def project_queries(q, k, carry=None, block: int = PROJECTOR_BLOCK):
    """TNT's Q-K projection (Eq. 7 / 15, App. C) over one stretch of a shard: ``q̃_t = M_t q_t`` with
    ``M_t = M_0 + Σ_{τ ≤ t} k_τ k_τᵀ``. ``q, k``: ``[B, T, H, D]`` (ℓ2-normalised keys); ``carry`` = ``M_0``
    ``[B, H, D, D]`` (``None``: zero, a shard start). Chunk-parallel: per token block, the carry plus the prefix sum
    of the earlier blocks' ``Σ k kᵀ`` applied to ``q_t``, plus the causal in-block term ``Σ_τ (q_t·k_τ) k_τ``.
    Returns ``(q̃ [B, T, H, D], M_T [B, H, D, D])``."""
    t = q.shape[1]
    c = min(block, t)
    n = -(-t // c)

    def blocks(x):  # [B, H, n, c, D]
        return F.pad(x, (0, 0, 0, 0, 0, n * c - t)).transpose(1, 2).unflatten(2, (n, c))

    qb, kb = blocks(q), blocks(k)
    intra = (qb @ kb.transpose(-1, -2)).tril() @ kb
    sums = kb.transpose(-1, -2) @ kb                                 # Σ_{τ in block} k_τ k_τᵀ
    before = sums.cumsum(2) - sums                                   # M at each block start (M is symmetric)
    final = sums.sum(2)
    if carry is not None:
        before, final = before + carry.unsqueeze(2), final + carry
    out = (intra + qb @ before).flatten(2, 3)[:, :, :t].transpose(1, 2)
    return out, final


def _tokens(gates: dict, fn) -> dict:
    """``fn`` applied to every gate with a time axis (all but the feature-map coefficients)."""
    return {name: g if name == "feature_coeffs" else fn(g) for name, g in gates.items()}


class LocalMemory(RuleParameters):
    """A local memory ``W^{(i)}`` (Eq. 6 / 14): its rule (chunk ``C_{L,i}``), shard length ``S_{L,i}``, token-wise
    gates and learnable initial state ``W_init^{(i)}``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, rule: MemoryRule, shard_size: int, gate_config):
        super().__init__()
        self.shard_size = shard_size
        self.build_rule_parameters(dim, num_heads, head_dim, rule, **gate_config)


class TNTMemory(MemoryMixer):
    """TNT's hierarchical memory as a token mixer (same forward signature and cache protocol as
    :class:`MemoryMixer`, which it extends): shared q/k/v projections, convs and output path; one global memory
    running ``rule`` (``rule.chunk_size`` is ``C_G``) with its gates and initial state (those of the
    :class:`MemoryMixer` part, so :meth:`read` and :meth:`memory_state` refer to the global memory); and one
    :class:`LocalMemory` per entry of ``local_chunk_sizes`` (``C_{L,i}``), each with the same rule at its own chunk
    size, shard length ``shard_sizes[i]`` (``S_{L,i}``; one int for all), gates and initial state. Every memory's
    gates are built from the same keywords (``lr_init`` defaults per memory to ``min(0.05, 0.4 / C)``).
    ``qk_projection``: the local memories read ``ℓ2(M_t q_t)`` (``"normalized"``) or the printed ``M_t q_t``
    (``"sum"``, whose norm grows ≈ ``n/D`` with the ``n`` keys of the shard so far).

    Cache entry: ``memory`` (global state), ``start`` (global state at its chunk start, which the reads use),
    ``locals`` (per local memory ``{"memory", "projector"}``, ``None`` at a shard boundary), ``position`` (tokens
    seen) and ``conv``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, *, rule: MemoryRule,
                 local_chunk_sizes: Sequence[int] = (8,), shard_sizes: int | Sequence[int] = 2048,
                 qk_projection: str = "normalized", **kwargs):
        chunks, shards = check_local_sizes(local_chunk_sizes, shard_sizes)
        if qk_projection not in QK_PROJECTIONS:
            raise ValueError(f"qk_projection must be one of {list(QK_PROJECTIONS)}, got {qk_projection!r}")
        if kwargs.get("caching") is not None:
            raise ValueError("caching is not built for TNT's hierarchical memory yet")
        super().__init__(dim, num_heads, head_dim, rule=rule, **kwargs)
        self.qk_projection = qk_projection
        self.local_memories = nn.ModuleList(
            LocalMemory(dim, self.heads, self.head_dim, replace(rule, chunk_size=c), s, self.gate_config)
            for c, s in zip(chunks, shards))

    @property
    def local_chunk_sizes(self) -> tuple[int, ...]:
        return tuple(m.rule.chunk_size for m in self.local_memories)

    @property
    def shard_sizes(self) -> tuple[int, ...]:
        return tuple(m.shard_size for m in self.local_memories)

    def set_local_chunk_sizes(self, sizes: Sequence[int]) -> None:
        """Stage 2 (TNT §3.3): continue with local chunks ``C'_{L,i}`` (e.g. smaller, down to 1 for decoding).
        Only the local rules' ``chunk_size`` changes; parameters, shards and the global memory stay. Call it between
        sequences, not with a decoding cache that holds a partly filled local chunk."""
        for memory, c in zip(self.local_memories, self.check_local_chunk_sizes(sizes)):
            memory.rule = replace(memory.rule, chunk_size=c)

    def check_local_chunk_sizes(self, sizes: Sequence[int]) -> tuple[int, ...]:
        """``sizes`` as a tuple if this layer can take them as its local chunk sizes, else ``ValueError``."""
        chunks = _positive_ints("local_chunk_sizes", sizes)
        if len(chunks) != len(self.local_memories):
            raise ValueError(f"local_chunk_sizes needs {len(self.local_memories)} entries, got {len(chunks)}")
        check_local_sizes(chunks, self.shard_sizes)
        return chunks

    def mix(self, q, k, v, x, cache, use_cache):
        """Eq. 15: the global read plus every local read, and the cache entry (without the conv windows)."""
        position = 0 if cache is None else cache["position"]
        out, entry = self.global_read(q, k, v, x, cache, use_cache)
        entries = []
        for i in range(len(self.local_memories)):
            read, local = self.local_read(i, q, k, v, x, None if cache is None else cache["locals"][i],
                                          position, use_cache)
            out = out + read
            entries.append(local)
        return out, {**entry, "locals": entries, "position": position + q.shape[1]}

    def global_read(self, q, k, v, x, cache, use_cache):
        """``f(V_{ξ(t, C_G)}, q_t)`` (Eq. 7) while writing with Eq. 5, one global chunk at a time: each stretch up
        to the next chunk boundary is read at the chunk-start state (``recall``), then written.
        Returns the reads and ``{"memory", "start"}``."""
        state = self.initial_state() if cache is None else cache["memory"]
        start = state if cache is None else cache["start"]
        gates = self.gates(x)
        reads, a, t = [], 0, q.shape[1]
        while a < t:
            b = min(t, a + self.rule.chunk_size - state.offset)
            piece = _tokens(gates, lambda g, a=a, b=b: g[:, a:b])
            qs = q[:, a:b]
            reads.append(recall(qs, self.rule, start, **self.feature_parameters()))
            if b < t or use_cache:  # the last stretch's write only matters to a cache
                _, state = memorize(qs, k[:, a:b], v[:, a:b], self.rule, initial_state=state,
                                    output_final_state=True, **piece)
                start = state if state.offset == 0 else start
            a = b
        return torch.cat(reads, 1), {"memory": state, "start": start}

    def project(self, q, k, carry=None):
        """The local memories' queries ``q̃_t`` (``ℓ2(M_t q_t)`` or ``M_t q_t``, see ``qk_projection``) and ``M_T``
        over one stretch of a shard (:func:`project_queries`)."""
        q_proj, projector = project_queries(q, k, carry)
        return (F.normalize(q_proj, dim=-1) if self.qk_projection == "normalized" else q_proj), projector

    def local_read(self, i, q, k, v, x, entry, position, use_cache):
        """``f(W_t^{(i)}, q̃_t^{(i)})`` (Eq. 6 / 14 / 15) for tokens ``position …``: the rest of the current
        shard continues from ``entry``; the following whole shards start from ``W_init^{(i)}`` and a zero projector,
        folded into the batch; a last partial shard likewise. Returns the reads and the new entry (``None`` at a
        shard boundary)."""
        memory = self.local_memories[i]
        s, (b, t) = memory.shard_size, q.shape[:2]
        gates = memory.gates(x)
        head = min(t, -position % s)
        full = (t - head) // s
        # (first token, tokens per shard, shards, carried entry): the current shard's rest, whole shards, the tail
        stretches = [(0, head, 1, entry), (head, s, full, None), (head + full * s, t - head - full * s, 1, None)]
        reads = []
        for lo, length, shards, carry in stretches:
            if length * shards == 0:
                continue

            def fold(z, lo=lo, length=length, shards=shards):  # [B, shards·length, …] → [B·shards, length, …]
                return z[:, lo:lo + shards * length].reshape(b * shards, length, *z.shape[2:])

            q_proj, projector = self.project(fold(q), fold(k), None if carry is None else carry["projector"])
            state = memory.initial_state() if carry is None else carry["memory"]
            read, final = memorize(q_proj, fold(k), fold(v), memory.rule, initial_state=state,
                                   output_final_state=use_cache, **_tokens(gates, fold))
            reads.append(read.reshape(b, shards * length, *read.shape[2:]))
            entry = {"memory": final, "projector": projector}
        if (position + t) % s == 0:
            entry = None
        return torch.cat(reads, 1), entry
