"""The test-time-memory token mixer (SPEC §2.3, §10.3): one layer for Titans, Miras, ATLAS, TTT, DeltaNet, ...

``x → q, k, v`` (linear, depthwise causal conv of size 4, SiLU, ℓ2-normalised q and k) ``→ memorize`` (the rule:
memory, objective, retention, learner) ``→`` per-head RMSNorm ``⊙ SiLU(W_g x) → W_o``, with token-wise bounded gates
(lr θ_t, decay α_t, momentum η_t, Yaad's threshold δ_t, the robust shift Δ_t, Omega window gates γ_t), per-head
feature parameters (``poly``'s coefficients ``a_i``, the ``exp`` kernel's inverse temperature ``s``) and a
learnable initial memory state (meta-learned "knowledge transfer via initialisation", NL §3.3).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..memory import MemoryRule, MemoryState, memorize, recall
from ..memory.nets import default_poly_coeffs
from .cache import LayerStates
from .caching import MemoryCaching
from .common import (Gate, RMSNorm, ShortConvolution, head_layout, keep_init, padded_output,
                     residual_output)


#: the momentum gate's bound η < 0.95: the outer loop drove an unbounded gate to η = 0.996 with θ = 0.037, an
#: effective inner step θ/(1 − η) ≈ 9 per token, and the memory read to 2·10³⁰ within 64 tokens (docs/tnt.md).
MOMENTUM_MAX = 0.95


def ema_step(lr, momentum):
    """Titans' momentum ``S_t = η_t S_{t−1} − θ_t u_t`` (Eq. 13) with ``θ_t = (1 − η_t) θ̃_t``: an exponential moving
    average of the surprises, so a run of equal surprises moves the memory by ``θ̃`` per token, not by up to
    ``θ̃ / (1 − η)`` (20× at the bound η = 0.95). With the gradients of a chunk frozen at its start (SPEC §2.2), a
    key repeated through a chunk otherwise steps ``≈ C θ̃ / (1 − η)`` along itself: the tiny Titans' memories blew up
    on a run of one token (position 104) and in MAC (aligned attention outputs) at initialisation
    (docs/decisions.md). ``θ̃`` is the layer's lr gate; ``θ_t`` stays a data-dependent gate as in the paper."""
    return lr * (1 - momentum)  # both per head or both channel-wise (one ``channel_gates``)


def chunk_steps(chunk_size: int, lr_init: float | None, lr_max: float | None,
                ema: bool = False) -> tuple[float, float]:
    """The inner step's initial value and bound: given values, else ``lr_init = min(0.05, 0.4 / C)`` (a chunk of C
    tokens takes C steps from one gradient point, so the stable step shrinks with C) and ``lr_max = 4 · lr_init``.
    With ``ema`` (the EMA momentum step, :func:`ema_step`, whose steady gain is 1 where the plain momentum's was
    ``1/(1 − η)``) ``lr_init = min(0.1, 1.5 / C)`` and ``lr_max = 2 · lr_init``: the per-token step's bound is the
    plain step's (0.2 at C = 8) while the steady step is 5–20× smaller, and the memory still holds its norm against
    the forget gate over 4K tokens at C = 64 (docs/decisions.md)."""
    cap, scale, bound = (0.1, 1.5, 2) if ema else (0.05, 0.4, 4)
    lr_init = min(cap, scale / chunk_size) if lr_init is None else lr_init
    return lr_init, bound * lr_init if lr_max is None else lr_max


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y``."""
    return math.log(math.expm1(y))


def window_gates(dim: int, num_heads: int, rule: MemoryRule) -> Gate:
    """The Omega window's gates ``γ_{t,r}`` (Atlas Eq. 9), per (head, offset), in ``(0, 1/c)`` and initialised at
    ``1/(2c)``: the surprise ``u_t = Σ_r γ_{t,r} ∇ℓ(k_{t−r})`` is then a weighted mean of the window's ``c`` gradients,
    so a token moves the memory at most as far as one gradient does, and the step bound of :func:`chunk_steps`
    holds for every window. With gates in ``(0, 1)`` a token's step reached ``c θ``: OmegaNet's per-token step
    ``θ_t Σ_r γ_{t,r}`` (0.1 at initialisation) grew to 0.35 in training and its chunk-frozen inner loop diverged
    (docs/decisions.md). The factor ``1/c`` is absorbed by ``θ``. Muon's step has the size ``θ_t`` whatever the
    surprise's (Newton–Schulz normalises the momentum), so its gates keep ``(0, 1)``, initialised at 1/2."""
    scale = 1.0 if rule.learner == "muon" else 1.0 / rule.window
    return Gate(dim, num_heads * rule.window, init=0.5 * scale, scale=scale)


def normalised_step(rule: MemoryRule, key_sq_norm, lr):
    """The step on a feature-mapped key, ``θ_t = θ̃_t / ‖φ(k_t)‖²`` (normalised LMS; DeltaNet's unit keys in
    feature space), with ``key_sq_norm`` ``[H]`` the squared norm of a unit key's features (the ``exp`` kernel's
    ``‖φ*(√s k)‖² = exp(s ‖k‖²) = e^s`` — unnormalised, ``θ̃ e^s`` reached 2.7 at ``s = 4`` and a repeated key
    diverged; ``poly``'s ``Σ_i a_i``). Where the write reads the memory at its key (``dgd``, or an objective other than
    ``dot``) its curvature along ``φ(k)`` is ``‖φ(k)‖²``, so the bounds of :func:`chunk_steps` (set for unit keys)
    hold for every feature map: the delta rule's eigenvalue along a key is ``1 − θ̃_t``. The ``dot`` bias with GD
    does not read the memory when it writes, and Muon's orthogonalised step carries no scale of the gradient: their
    ``θ`` stays."""
    if rule.learner == "muon" or not (rule.is_dgd or rule.objective != "dot"):
        return lr
    return lr / key_sq_norm.view(-1, *(1,) * (lr.dim() - 3))  # per head; channel gates [B, T, H, D]


#: the raw ``exp_scale`` (``s = softplus(σ) = 1``) of a state dict written before the ``exp`` kernel had a scale:
#: the kernel ``exp(q·k)`` it was trained with (:func:`_unit_exp_scale`, ``from_pretrained``).
EARLIER_EXP_SCALE = inverse_softplus(1.0)


def _unit_exp_scale(layer, state_dict: dict, prefix: str, *args) -> None:
    """State dicts written before the ``exp`` kernel had a scale load with :data:`EARLIER_EXP_SCALE`."""
    if prefix + "exp_scale" not in state_dict:
        state_dict[prefix + "exp_scale"] = torch.full_like(layer.exp_scale, EARLIER_EXP_SCALE)


class RuleParameters(nn.Module):
    """The outer-loop parameters of one multi-head memory running ``rule``: its token-wise gates and learnable
    initial state (documented in :class:`MemoryMixer`). :meth:`build_rule_parameters` creates them, so a subclass
    decides where they are registered; :class:`MemoryMixer` and TNT's local memories share this."""

    def build_rule_parameters(self, dim: int, num_heads: int, head_dim: int, rule: MemoryRule, *,
                              channel_gates: bool, gate_rank: int, lr_init: float | None, lr_max: float | None,
                              decay_init: float, momentum_init: float, threshold_init: float, shift_init: float,
                              ema_momentum: bool, exp_scale_init: float | None, poly_normalised_step: bool):
        """``gate_config`` keeps the arguments (``lr_init``/``lr_max`` as given, before their chunk-size-dependent
        defaults) to build further memories alike."""
        self.rule, self.heads, self.head_dim = rule, num_heads, head_dim
        self.gate_config = dict(channel_gates=channel_gates, gate_rank=gate_rank, lr_init=lr_init, lr_max=lr_max,
                                decay_init=decay_init, momentum_init=momentum_init, threshold_init=threshold_init,
                                shift_init=shift_init, ema_momentum=ema_momentum, exp_scale_init=exp_scale_init,
                                poly_normalised_step=poly_normalised_step)
        self.poly_normalised_step = poly_normalised_step
        self.ema_momentum = ema_momentum and rule.learner == "momentum"
        channels = head_dim if channel_gates else None
        lr_init, lr_max = chunk_steps(rule.chunk_size, lr_init, lr_max, ema=self.ema_momentum)
        self.lr = Gate(dim, num_heads, init=lr_init, scale=lr_max, channels=channels, rank=gate_rank)
        self.decay = None if rule.retention == "none" else \
            Gate(dim, num_heads, init=decay_init, channels=channels, rank=gate_rank)
        self.momentum = Gate(dim, num_heads, init=momentum_init, scale=MOMENTUM_MAX, channels=channels,
                             rank=gate_rank) if rule.uses_momentum else None
        self.threshold = nn.Linear(dim, num_heads) if rule.objective == "huber" else None
        self.shift = nn.Linear(dim, num_heads) if rule.objective == "robust" else None
        for lin, value in ((self.threshold, threshold_init), (self.shift, shift_init)):
            if lin is not None:  # softplus(b) = value at initialisation
                nn.init.zeros_(lin.weight)
                nn.init.constant_(lin.bias, inverse_softplus(value))
                keep_init(lin)
        self.window = window_gates(dim, num_heads, rule) if rule.window > 1 else None
        if rule.feature_map == "poly":  # a_i = softplus(ρ_i), initialised at 1/i! (Atlas Eq. 5)
            a = default_poly_coeffs(rule.degree)
            self.poly = nn.Parameter(torch.log(torch.expm1(a)).expand(num_heads, -1).clone())
        if rule.feature_map == "exp":  # s = softplus(σ) per head: exp(s q·k) (MemoryMixer's docstring)
            s = math.sqrt(head_dim) if exp_scale_init is None else exp_scale_init
            self.exp_scale = nn.Parameter(torch.full((num_heads,), inverse_softplus(s)))
            self.register_load_state_dict_pre_hook(_unit_exp_scale)
        self.initial = nn.ParameterList(self._initial_state())

    def _initial_state(self):
        """Learnable ``M_0`` per head: the rule's default (MLP ``N(0, 1/in)``, matrix 0). Memora's state is logits
        (``memory.maps.memory_of``), drawn ``N(0, 1)``: uniform rows would make every hidden unit of an MLP memory
        identical forever."""
        if self.rule.feature_map == "exp":
            return []
        state = self.rule.init_state(1, self.heads, self.head_dim, generator=torch.Generator().manual_seed(0))
        if self.rule.retention == "kl":
            g = torch.Generator().manual_seed(1)
            return [nn.Parameter(torch.randn(w[0].shape, generator=g)) for w in state.weights]
        return [nn.Parameter(w[0]) for w in state.weights]

    def initial_state(self) -> MemoryState:
        if self.rule.feature_map == "exp":
            ref = next(self.lr.parameters())
            return self.rule.init_state(1, self.heads, self.head_dim, dtype=ref.dtype, device=ref.device)
        return MemoryState(weights=list(self.initial))

    def gates(self, x):
        """Token-wise gates (every token is real here: a padded batch reaches the memory left-aligned, through
        :func:`~nestedmemory.layers.common.padded_output`, its padding after the real tokens). With
        ``ema_momentum`` the momentum learner's step is ``θ_t = (1 − η_t) θ̃_t`` (:func:`ema_step`)."""
        out = {"lr": self.lr(x)}
        if self.decay is not None:
            out["decay"] = self.decay(x)
        if self.momentum is not None:
            out["momentum"] = self.momentum(x)
            if self.ema_momentum:
                out["lr"] = ema_step(out["lr"], out["momentum"])
        if self.threshold is not None:
            out["threshold"] = F.softplus(self.threshold(x))
        if self.shift is not None:
            out["shift"] = F.softplus(self.shift(x))
        if self.window is not None:
            out["window_gates"] = self.window(x).unflatten(-1, (self.heads, self.rule.window))
        out.update(self.feature_parameters())
        if "feature_coeffs" in out and self.poly_normalised_step:
            out["lr"] = normalised_step(self.rule, out["feature_coeffs"].sum(-1), out["lr"])
        if "feature_scale" in out:
            out["lr"] = normalised_step(self.rule, torch.exp(out["feature_scale"]), out["lr"])
        return out

    def feature_parameters(self) -> dict:
        """``memorize`` / ``recall``'s feature arguments: ``poly``'s ``a_i = softplus(ρ_i)``, the ``exp`` kernel's
        ``s = softplus(σ)`` per head (none for other rules)."""
        if self.rule.feature_map == "poly":
            return {"feature_coeffs": F.softplus(self.poly)}
        if self.rule.feature_map == "exp":
            return {"feature_scale": F.softplus(self.exp_scale)}
        return {}


class MemoryMixer(RuleParameters):
    """A multi-head associative-memory layer running ``rule`` (one independent memory per head).

    Gates at initialisation (every token the same value): ``lr_init`` (θ, default ``min(0.05, 0.4/C)``, with the
    EMA momentum step ``min(0.1, 1.5/C)`` (:func:`chunk_steps`): a chunk of C tokens takes C steps from one
    gradient point, so the stable step shrinks with C), bounded by ``lr_max`` (default ``4 · lr_init``,
    ``2 · lr_init`` with the EMA step), ``decay_init`` (α = 0.001), ``momentum_init`` (η = 0.9, bounded by
    :data:`MOMENTUM_MAX`; ``ema_momentum``: the momentum learner steps ``(1 − η_t) θ_t``, :func:`ema_step`;
    ``False`` is the plain Titans step of earlier versions): with these the memory keeps its norm over 4K tokens
    at initialisation (tested); ``channel_gates=True`` makes lr/decay/momentum channel-wise through a
    rank-``gate_rank`` projection (matrix memories only). ``qk_activation``: the non-linearity after the conv
    (Titans: SiLU on q, k and v). ``value_norm``: normalise the values per head too, to the scale of the memory's
    output — unit ℓ2 norm, or RMS 1 behind the memory's LayerNorm (default: for MLP memories, where the target's
    scale sets the inner loop's curvature; matrix memories keep raw values). Omega
    window gates lie in ``(0, 1/c)``, Muon's in ``(0, 1)`` (:func:`window_gates`). The ``exp`` kernel memory learns
    an inverse temperature per head, ``exp(s q·k)``, from ``exp_scale_init`` (default ``sqrt(head_dim)``; ``1``
    starts from the unscaled kernel of earlier versions, which is what a state dict without it loads with), and
    normalises a delta step by ``e^s`` (:func:`normalised_step`). Unit q and k without ``s`` keep ``exp(q·k)`` in
    ``[e⁻¹, e]``: an exactly matching key among 64 random ones got 4% of the read, so DeepTransformers / SWDT / Dot
    could not recall; ``sqrt(head_dim)`` is the logit a matching key gets in softmax attention. The ``poly``
    memory's step is normalised by its keys' squared feature norm ``Σ_i a_i`` (:func:`normalised_step`;
    ``poly_normalised_step=False``: the earlier step, under which a trained OmegaNet's repeated key diverged)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, *, rule: MemoryRule,
                 conv_size: int = 4, activation: str | None = "silu", channel_gates: bool = False,
                 gate_rank: int = 32, lr_init: float | None = None, lr_max: float | None = None,
                 decay_init: float = 0.001,
                 momentum_init: float = 0.9, threshold_init: float = 0.25, shift_init: float = 0.1,
                 ema_momentum: bool = True, value_norm: bool | None = None, exp_scale_init: float | None = None,
                 poly_normalised_step: bool = True, caching: dict | None = None, layer_idx: int = 0):
        super().__init__()
        head_dim = head_layout(dim, num_heads, head_dim)
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
        self.layer_idx = layer_idx
        self.activation = activation
        inner = num_heads * head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner, bias=False) for _ in range(3))
        self.convs = nn.ModuleList(ShortConvolution(inner, conv_size) for _ in range(3))
        self.build_rule_parameters(dim, num_heads, head_dim, rule, channel_gates=channel_gates, gate_rank=gate_rank,
                                   lr_init=lr_init, lr_max=lr_max, decay_init=decay_init,
                                   momentum_init=momentum_init, threshold_init=threshold_init, shift_init=shift_init,
                                   ema_momentum=ema_momentum, exp_scale_init=exp_scale_init,
                                   poly_normalised_step=poly_normalised_step)
        self.norm = RMSNorm(head_dim)
        #: unit-norm targets for deep memories: with raw values the outer loop grew ‖v‖ (0.5 → 3.6) with the lr gate,
        #: the MLP memory's weights and curvature with them, and its chunk-frozen inner loop diverged (docs/tnt.md);
        #: the read is RMS-normalised after the memory, so the values' scale carries nothing else. Behind a LayerNorm
        #: (output RMS 1) a unit-norm target is out of reach (‖M(k) − v‖ ≥ √d − 2): the write never vanishes and,
        #: as the decay shrinks the pre-norm branch, the norm's 1/σ Jacobian grew Yaad's 4K-token gradients 10⁷×.
        self.value_norm = rule.memory == "mlp" if value_norm is None else value_norm
        self.value_scale = math.sqrt(head_dim) if rule.layernorm else 1.0
        self.g_proj = nn.Linear(dim, inner, bias=False)
        self.o_proj = residual_output(nn.Linear(inner, dim, bias=False))
        self.caching = None if caching is None else MemoryCaching(dim, num_heads, head_dim, rule, caching)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        cache = past_key_values[self.layer_idx] if past_key_values is not None else None
        padded = padded_output(self, hidden_states, attention_mask, cache, use_cache)
        if padded is not None:
            return padded, None, past_key_values

        convs = [None] * 3 if cache is None else cache["conv"]
        qkv, new_convs = [], []
        for proj, conv, state in zip((self.q_proj, self.k_proj, self.v_proj), self.convs, convs):
            y, state = conv(proj(hidden_states), state)
            y = F.silu(y) if self.activation == "silu" else y
            qkv.append(y.unflatten(-1, (self.heads, self.head_dim)))
            new_convs.append(state)
        q, k, v = qkv
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        v = F.normalize(v, dim=-1) * self.value_scale if self.value_norm else v
        out, entry = self.mix(q, k, v, hidden_states, cache, use_cache)
        if use_cache:
            past_key_values = LayerStates() if past_key_values is None else past_key_values
            past_key_values.update(self.layer_idx, {**entry, "conv": new_convs})
        return self._output(out, hidden_states), None, past_key_values

    def mix(self, q, k, v, x, cache, use_cache):
        """The memory read ``[B, T, H, Dv]`` after writing ``(k, v)`` (gates from ``x``), and
        the layer's new cache entry without the conv windows (``None`` values unless ``use_cache``)."""
        if self.caching is not None:
            return self.caching.mix(self, q, k, v, x, cache, use_cache)
        memory = self.initial_state() if cache is None else cache["memory"]
        out, final = memorize(q, k, v, self.rule, initial_state=memory, output_final_state=use_cache,
                              **self.gates(x))
        return out, {"memory": final}

    def _output(self, read, x):
        """``W_o(RMSNorm(read) ⊙ SiLU(W_g x))``: per-head norm of the memory read, gated by the input."""
        return self.o_proj(self.norm(read).flatten(-2) * F.silu(self.g_proj(x)))

    def memory_state(self, past_key_values) -> MemoryState:
        """The memory state this layer holds in ``past_key_values`` (its learnable initial state if none)."""
        entry = None if past_key_values is None else past_key_values[self.layer_idx]
        return self.initial_state() if entry is None else entry["memory"]

    def read(self, x, state: MemoryState):
        """``M*(x)``: ``state`` read at the queries of ``x`` ``[B, N, dim]`` *without* a write (Titans Eq. 15/21,
        "forward pass without weight update"), through the layer's query and output paths. ``x`` has no time axis,
        so the query skips the causal conv (``memory.recall``)."""
        b, n, _ = x.shape
        q = self.q_proj(x)
        q = F.silu(q) if self.activation == "silu" else q
        q = F.normalize(q.unflatten(-1, (self.heads, self.head_dim)), dim=-1)
        return self._output(recall(q, self.rule, state, **self.feature_parameters()), x)


def NeuralMemory(dim: int, num_heads: int, head_dim: int | None = None, chunk_size: int = 64, depth: int = 2,
                 expansion: int = 4, **kwargs) -> MemoryMixer:
    """Titans' neural long-term memory (Titans §3.1, Eq. 8-15): a depth-``depth`` residual MLP memory (``depth=1``:
    a matrix) trained online on ``½‖M(k) − v‖²`` with token-wise lr, momentum and forget gates."""
    memory = dict(memory="linear") if depth == 1 else dict(memory="mlp", depth=depth, expansion=expansion)
    rule = MemoryRule(**memory, objective="l2", retention="decay", learner="momentum", chunk_size=chunk_size)
    return MemoryMixer(dim, num_heads, head_dim, rule=rule, **kwargs)
