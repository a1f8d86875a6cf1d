"""Self-modifying Titans (Nested Learning §8.1–8.2, Eq. 83–93; SPEC §6.5): the token mixer of Hope.

Every projection except the query is itself a memory that learns in context, and every memory writes values it
generates itself:

    q_t = W_q x_t                          (the only non-adaptive projection, Eq. 83; conv + SiLU + ℓ2-norm)
    k_t = ℓ2(M_k(x_t)),  v_t = ℓ2(M_v(x_t)),  η_t = g_η(M_η(x_t)),  α_t = g_α(M_α(x_t))  (Eq. 84)
    v̂_□,t = M_□(v_t)                     for □ ∈ {k, v, η, α, memory}                 (Eq. 85)
    M_□ ← M_□ (α'_t I − η_t k_t k_tᵀ) − η_t ∇ℓ2(M_□; k_t, v̂_□,t)   (DGD with weight decay, Eq. 86–88)
    o_t = M_memory,t−1(q_t)                (Eq. 83 / 94: read before the write of token t, ``read="before"``)

``read="after"`` reads ``M_memory,t(q_t)`` after the write of token t instead (the memory core's convention, as Titans
and DeltaNet): a different model, not a shifted one — the output of token t then holds its own write, whose key
``k_t`` and target ``v̂_memory,t`` are generated from x_t (docs/decisions.md).

Each M_□ is a residual MLP ``x + W_1 σ(W_2 x)`` per head (Eq. 89/91) with a meta-learned initial state (NL §3.3,
knowledge transfer by initialisation). Stability (docs/decisions.md): v is ℓ2-normalised (with ``‖v‖ > 2`` the
self-generated target makes the write expansive) and DGD takes its implicit step ``η/(1 + η‖h‖²)`` per layer
(``MemoryRule.proximal``). ``momentum`` adds Titans' momentum to the gradient term (the core's ``dgd-momentum``).
Chunkwise training (Eq. 90): within a chunk every generated quantity
(k, v, η, α, v̂) comes from the memories' states at the chunk start. Two chunk sizes: ``chunk_size`` for M_memory
and ``generator_chunk_size`` shared by M_k, M_v, M_η, M_α; one must divide the other, and the layer advances in
steps of the smaller one, so each step sees frozen generation points and the memory core does the writes (the
core's chunk-parallel DGD for ``mode="chunked"``, its literal token-by-token rule for ``mode="recurrent"``).

Gates (per head, SPEC §6.5 [?]: the paper leaves their reduction open): ``η_t = η_max σ(⟨u_η, M_η(x_t)⟩ + b_η)``,
``α_t = σ(⟨u_α, M_α(x_t)⟩ + b_α)`` with ``b`` set so every token gets ``lr_init`` / ``decay_init`` up to the small
random read-out ``u`` (which keeps M_η and M_α in the gradient path from the first step). The DGD decay
``α'_t = 1 − α_t``; ``decay_init`` = 1e-4: at 1e-3 the meta-learned initial memory decays to 1% of its norm over
4K tokens (measured), at 1e-4 it keeps 38% while the writes build the learned part. Outputs: per-head RMSNorm ⊙
SiLU(W_g x) → W_o, as in :class:`MemoryMixer`.

Steps (docs/decisions.md, "Reflections"): ``η ∈ (0, 1.5)``, 0.5 at init, with the over-relaxed implicit step
(``relaxation`` ω = 2), so the output layer's transition ``(1 − η‖h‖²)/(1 + η‖h‖²)`` along its input spans (−1, 1):
reflections, which parity needs. The inner layer's step is bounded by ``inner_lr_max`` (its gradient passes through
the output layer, which its implicit step does not see). With ``momentum`` the defaults are the small chunk-scaled
steps of :class:`MemoryMixer` with ω = 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..memory import MemoryRule, MemoryState, memorize
from ..memory.nets import explicit, forward as memory_forward
from .cache import LayerStates
from .common import RMSNorm, ShortConvolution, head_layout, logit, padded_output, residual_output
from .memory import chunk_steps

#: the generated memories, in the order they are stacked along the head axis
GENERATORS = ("k", "v", "lr", "decay")
#: when M_memory is read: before the write of the token (Eq. 94) or after it (the memory core's convention)
READS = ("before", "after")


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans with DGD + decay. ``expansion`` is the hidden width factor of M_memory's MLP,
    ``generator_expansion`` that of M_k, M_v, M_η, M_α. ``read``: M_memory is read before (Eq. 94) or after the
    write of each token. ``mode`` selects the memory core's path (tests compare ``chunked`` with the literal
    ``recurrent`` one)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, *, chunk_size: int = 64,
                 generator_chunk_size: int | None = None, expansion: int = 4, generator_expansion: int = 1,
                 activation: str = "gelu", conv_size: int = 4, lr_init: float | None = None,
                 lr_max: float | None = None, inner_lr_max: float | None = 0.01, decay_init: float = 1e-4,
                 momentum: float | None = None, relaxation: float | None = None, read: str = "before",
                 mode: str = "chunked", layer_idx: int = 0):
        super().__init__()
        head_dim = head_layout(dim, num_heads, head_dim)
        generator_chunk_size = chunk_size if generator_chunk_size is None else generator_chunk_size
        for name, value in (("chunk_size", chunk_size), ("generator_chunk_size", generator_chunk_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if max(chunk_size, generator_chunk_size) % min(chunk_size, generator_chunk_size):
            raise ValueError(f"one of chunk_size={chunk_size} and generator_chunk_size={generator_chunk_size} "
                             "must divide the other")
        if mode not in ("chunked", "recurrent"):
            raise ValueError(f"mode must be 'chunked' or 'recurrent', got {mode!r}")
        if read not in READS:
            raise ValueError(f"read must be one of {list(READS)}, got {read!r}")
        if momentum is None:  # reflections: steps up to θ‖h‖² ≫ 1 with ω = 2 (docs/decisions.md)
            lr_init, lr_max = 0.5 if lr_init is None else lr_init, 1.5 if lr_max is None else lr_max
            relaxation = 2.0 if relaxation is None else relaxation
        else:  # a momentum multiplies the effective step by 1/(1 − η'): the small chunk-scaled steps of MemoryMixer
            lr_init, lr_max = chunk_steps(chunk_size, lr_init, lr_max)
            relaxation = 1.0 if relaxation is None else relaxation
        if not 0 < lr_init < lr_max:
            raise ValueError(f"lr_init must lie in (0, lr_max={lr_max}), got {lr_init}")
        if not 0 < decay_init < 1:
            raise ValueError(f"decay_init must lie in (0, 1), got {decay_init}")
        if momentum is not None and not 0 < momentum < 1:
            raise ValueError(f"momentum must be None or lie in (0, 1), got {momentum}")
        common = dict(memory="mlp", depth=2, residual=True, activation=activation, objective="l2",
                      retention="decay", learner="dgd" if momentum is None else "dgd-momentum", proximal=True,
                      relaxation=relaxation, inner_lr_max=inner_lr_max)
        self.rule = MemoryRule(expansion=expansion, chunk_size=chunk_size, **common)
        self.generator_rule = MemoryRule(expansion=generator_expansion, chunk_size=generator_chunk_size, **common)
        self.heads, self.head_dim, self.layer_idx, self.mode, self.lr_max = num_heads, head_dim, layer_idx, mode, lr_max
        self.read = read
        inner = num_heads * head_dim
        self.x_proj, self.q_proj = nn.Linear(dim, inner, bias=False), nn.Linear(dim, inner, bias=False)
        self.convs = nn.ModuleList(ShortConvolution(inner, conv_size) for _ in range(2))
        g = torch.Generator().manual_seed(layer_idx)
        self.initial = nn.ParameterList(_initial(self.rule, num_heads, head_dim, g))
        self.generator_initial = nn.ParameterList(_initial(self.generator_rule, len(GENERATORS) * num_heads,
                                                           head_dim, g))
        # gate read-outs: small random u (so M_η, M_α get gradients at once), bias = the initial gate value
        self.gate_readout = nn.Parameter(0.1 * torch.randn(2, num_heads, head_dim, generator=g) / head_dim ** 0.5)
        self.gate_bias = nn.Parameter(torch.tensor([[logit(lr_init / lr_max)], [logit(decay_init)]])
                                      .expand(2, num_heads).clone())
        # the momentum coefficient η' of every memory: a learned constant per head
        self.momentum_logit = None if momentum is None else nn.Parameter(torch.full((num_heads,), logit(momentum)))
        self.norm = RMSNorm(head_dim)
        self.g_proj = nn.Linear(dim, inner, bias=False)
        self.o_proj = residual_output(nn.Linear(inner, dim, bias=False))

    @property
    def step(self) -> int:
        return min(self.rule.chunk_size, self.generator_rule.chunk_size)

    def initial_state(self) -> dict:
        def state(weights):
            momentum = None if self.momentum_logit is None else [torch.zeros_like(w) for w in weights]
            return MemoryState(weights=list(weights), momentum=momentum)
        return {"memory": state(self.initial), "generators": state(self.generator_initial)}

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        t = hidden_states.shape[1]
        cache = past_key_values[self.layer_idx] if past_key_values is not None else None
        padded = padded_output(self, hidden_states, attention_mask, cache, use_cache)
        if padded is not None:
            return padded, None, past_key_values
        convs = [None, None] if cache is None else cache["conv"]
        (x, x_conv), (q, q_conv) = (conv(proj(hidden_states), state) for proj, conv, state in
                                    zip((self.x_proj, self.q_proj), self.convs, convs))
        x = F.silu(x).unflatten(-1, (self.heads, self.head_dim))
        q = F.normalize(F.silu(q).unflatten(-1, (self.heads, self.head_dim)), dim=-1)
        states = self.initial_state() if cache is None else cache["states"]
        position = 0 if cache is None else cache["position"]
        outs, start = [], 0
        while start < t:  # steps never cross a chunk boundary of either memory
            length = min(t - start, self.step - (position + start) % self.step)
            if self.mode == "recurrent":
                length = 1
            out, states = self._step(x[:, start:start + length], q[:, start:start + length], states)
            outs.append(out)
            start += length
        out = torch.cat(outs, dim=1)
        if use_cache:
            past_key_values = LayerStates() if past_key_values is None else past_key_values
            past_key_values.update(self.layer_idx, {"states": states, "conv": [x_conv, q_conv],
                                                    "position": position + t})
        return self.o_proj(self.norm(out).flatten(-2) * F.silu(self.g_proj(hidden_states))), None, past_key_values

    def _step(self, x, q, states):
        """Tokens ``x``/``q`` ``[B, n, H, D]`` inside one chunk of both memories: generate with the chunk-start
        states (Eq. 90), then write every memory with DGD + decay and read M_memory at ``q`` (before or after each
        token's write, ``read``)."""
        h, reps = self.heads, len(GENERATORS)
        gen_point, mem_point = _point(states["generators"]), _point(states["memory"])
        x_rep = x.repeat(1, 1, reps, 1)  # [B, n, 4H, D]: one copy per generator memory
        reads = _read(self.generator_rule, gen_point, x_rep).split(h, dim=2)
        k = F.normalize(reads[0], dim=-1)
        v = F.normalize(reads[1], dim=-1)
        logits = (torch.stack(reads[2:], 0) * self.gate_readout[:, None, None]).sum(-1)  # [2, B, n, H]
        lr = self.lr_max * torch.sigmoid(logits[0] + self.gate_bias[0])
        decay = torch.sigmoid(logits[1] + self.gate_bias[1])
        # v̂_□ = ℓ2(M_□(v)) (Eq. 85, normalised: a target that grows with the memory makes the write expansive)
        targets = F.normalize(_read(self.generator_rule, gen_point, v.repeat(1, 1, reps, 1)), dim=-1)
        target_memory = F.normalize(_read(self.rule, mem_point, v), dim=-1)
        momentum = None if self.momentum_logit is None else torch.sigmoid(self.momentum_logit).expand_as(lr)
        repeat = lambda g: None if g is None else g.repeat(1, 1, reps)  # noqa: E731
        _, gen_state = memorize(x_rep, k.repeat(1, 1, reps, 1), targets, self.generator_rule,
                                lr=repeat(lr), decay=repeat(decay), momentum=repeat(momentum),
                                initial_state=states["generators"], output_final_state=True, mode=self.mode)
        if self.read == "before":  # M_{t−1}(q_t): the state before the step, then the core's read after t − 1
            first = _read(self.rule, states["memory"].weights, q[:, :1])
            q = torch.cat((q[:, 1:], q[:, -1:]), 1)  # the core reads token t's state with q_{t+1} (the last: unused)
        out, mem_state = memorize(q, k, target_memory, self.rule, lr=lr, decay=decay, momentum=momentum,
                                  initial_state=states["memory"], output_final_state=True, mode=self.mode)
        if self.read == "before":
            out = torch.cat((first, out[:, :-1]), 1)
        return out, {"memory": mem_state, "generators": gen_state}


def _initial(rule: MemoryRule, heads: int, dim: int, generator) -> list[nn.Parameter]:
    """Meta-learned initial weights ``[H, in, out]``, ``N(0, 1/in)`` for both layers: every memory starts as the
    identity plus its own random deviation. (Starting at the identity, ``k = v`` and ``v̂ = v``: every write's error
    ``M(k) − v̂`` is zero and nothing learns.)"""
    return [nn.Parameter(torch.randn(heads, *shape, generator=generator) / shape[0] ** 0.5)
            for shape in rule.weight_shapes(dim)]


def _point(state: MemoryState) -> list:
    """The memory at the start of the current chunk (the core keeps it as ``anchor`` mid-chunk)."""
    return state.anchor if state.offset else state.weights


def _read(rule: MemoryRule, weights, x):
    """``M(x)`` for explicit weights (``[H, in, out]`` or ``[B, H, in, out]``) and inputs ``[B, n, H, D]``."""
    weights = [w.to(torch.promote_types(w.dtype, torch.float32)) for w in weights]
    h = x.transpose(1, 2).to(weights[0].dtype)
    return memory_forward(rule, h, h, explicit(weights))[0].transpose(1, 2).to(x.dtype)
