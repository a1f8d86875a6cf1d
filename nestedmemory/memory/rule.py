"""A memory rule: the Miras choices (SPEC §2.1, §10.1) as one immutable value.

A rule names the memory architecture, the attentional bias (inner objective), the retention gate and the memory
learning algorithm, plus the chunk size of the inner update (the memory's level / update frequency, NL §7).
Data-dependent quantities (learning rate, decay, momentum, Huber threshold, Omega window gates, feature-map
coefficients) are not part of the rule: they are tensors passed to :func:`nestedmemory.memory.memorize`, so the
outer loop can learn them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .maps import lq_link_inverse
from .state import MemoryState

MEMORIES = ("linear", "mlp")
ACTIVATIONS = ("gelu", "silu", "relu", "tanh", "identity")
FEATURE_MAPS = (None, "poly", "exp")
OBJECTIVES = ("dot", "l2", "lp", "huber", "robust")
RETENTIONS = ("none", "decay", "lq", "kl", "elastic")
LEARNERS = ("gd", "momentum", "omega", "muon", "dgd", "dgd-momentum")
#: retentions whose non-linear map is applied once per chunk, on its first ("lag") token (Miras Eq. 30-32).
LAG_RETENTIONS = ("lq", "kl", "elastic")


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"MemoryRule.{name}={value!r} is not supported; choose one of {list(options)}")


@dataclass(frozen=True)
class MemoryRule:
    """One associative-memory rule (Miras' four choices + level).

    Architecture (``memory``): ``"linear"`` is a matrix ``M(x) = x @ W``; ``"mlp"`` is
    ``M(x) = [x +] [LN](act(... act(x @ W1) ...) @ WL)`` with ``depth`` weight matrices, hidden width
    ``expansion * D``, no biases (Titans §3.1, Miras §5.3, Atlas Eq. 42); ``gated=True`` is Atlas++ Eq. 43,
    ``M(x) = x + (act(x @ W1) * (x @ W3)) @ W2`` (depth 2); ``zero_output=True`` starts the output layer at 0
    (``init_state``; without the residual ``M_0(x) = 0``, Titans' presets). ``feature_map="poly"`` feeds
    ``φ_p(x) = concat_i sqrt(a_i) x^{⊗i}`` (Atlas Eq. 5/22) to the first layer; the residual uses the raw input.
    ``feature_map="exp"`` is ``φ*`` (``exp(q·k)`` kernel; DeepTransformers / Dot) on a matrix memory: the exact
    non-parametric memory of ``kernel.py``, state ``[K, C]``, ``M(x) = exp(x Kᵀ) C``.

    Attentional bias (``objective``), with ``e = M(k) − v`` (SPEC §4.2):
    ``dot``: ``−⟨M(k), v⟩``; ``l2``: ``½‖e‖²``; ``lp``: ``Σ_j (e_j² + ε)^{p/2}`` (smoothed ``‖e‖_p^p``);
    ``huber``: Yaad's mixture, ``½‖e‖²`` if ``‖e‖₂ ≤ δ_t`` else ``δ_t (sqrt(‖e‖² + ε) − ½δ_t)`` (Huber of ``‖e‖₂``);
    ``robust``: ``½‖e‖² + Δ_t sqrt(‖e‖² + ε)`` (value-shift robust, Miras Eq. 17).

    Retention: ``none``; ``decay`` (``W ← (1 − α_t) W``, Titans' forget gate); ``lq`` (Moneta: accumulator
    ``A``, memory ``W = sign(A)|A|^{q−1} / ‖A‖_q^{q−2}``); ``kl`` (Memora, Miras Eq. 21:
    ``W ← c · softmax((1 − α_t) log W − θ_t ∇ℓ)`` over the output axis, kept as logits ``Z``, ``W = c · softmax(Z)``;
    ``c = simplex_scale``, by default the row's width ``n``: the entries then average 1 and at a near-uniform memory
    the step moves ``W`` by ``≈ −θ_t (I − 11ᵀ/n) ∇ℓ``, the Euclidean step of the other rules and of the chunk's
    linear phase; at ``c = 1`` the logit step moved the memory ``n``× as far for its scale, the chunk-frozen inner
    loop overshot and the outer gradients grew ``e^{0.04}`` per token, see ``docs/decisions.md``); ``elastic``
    (``W ← S_γ((1 − α_t) W − θ_t ∇ℓ)``, Miras Eq. 22). The non-linear maps of ``lq``, ``kl`` and ``elastic`` are
    applied on the first token of every chunk (Memora's lag token); see ``docs/decisions.md``.

    Learner: ``gd`` (``W_t = (1−α_t)W_{t−1} − θ_t u_t``), ``momentum`` (Titans Eq. 13-14:
    ``S_t = η_t S_{t−1} − θ_t u_t``, ``W_t = (1−α_t)W_{t−1} + S_t``), ``omega`` (= ``gd``; named for the
    Omega rule, set ``window``), ``muon`` (Atlas Eq. 32-33, descent form: ``S_t = η_t S_{t−1} − u_t``,
    ``W_t = (1−α_t)W_{t−1} + θ_t NS_k(S_t)``), ``dgd`` (Hope Eq. 88 in row form:
    ``W_t = ((1−α_t) I − θ_t x_t x_tᵀ) W_{t−1} − θ_t u_t``, ``x_t`` the layer's input; ``proximal=True`` replaces
``θ_t`` per layer by ``ω θ_t / (1 + θ_t ‖x_t‖²)``, at ``relaxation`` ``ω = 1`` the implicit step of the same
objective (NL App. C, by Sherman–Morrison): the eigenvalue ``1−α_t−θ‖x‖²`` along ``x`` then lies in
``(1−α_t−ω, 1−α_t]`` whatever the input norm; ``ω`` up to 2 over-relaxes it so it can reach −1 (reflections,
which state tracking such as parity needs, Grazzi et al. 2025); ``inner_lr_max`` bounds ``θ_t`` of every layer but the
output layer (their gradient term passes through the later layers' Jacobian, which the per-layer implicit step does
not see: with large ``θ`` they diverge, docs/decisions.md)), ``dgd-momentum``
(DGD whose gradient term goes through a momentum, Hope's "momentum" ablation: ``S_t = η_t S_{t−1} − θ_t u_t``,
``W_t = ((1−α_t) I − θ_t x_t x_tᵀ) W_{t−1} + S_t``; see ``docs/decisions.md``). ``proximal=True`` with ``gd`` or
``momentum`` (window 1) takes the implicit step along each token's gradient instead: ``θ_t ∇ℓ_t`` becomes
``ω θ_t ∇ℓ_t / (1 + θ_t ρ_t)``, ``ρ_t = ‖∇_W ℓ_t‖² / ‖∂ℓ_t/∂M(k_t)‖²`` the memory's curvature along the step
(for a linear memory ``‖k_t‖²``: NLMS / Longhorn's implicit step); it bounds the step's own overshoot where a
LayerNorm behind the memory divides by a shrinking spread (docs/decisions.md, "Yaad's implicit step"). The surprise
    ``u_t = Σ_{r<c} γ_{t,r} ∇ℓ(A; k_{t−r}, v_{t−r})`` (Omega window ``c``, Atlas Eq. 9) is taken at ``A``, the
    memory at the end of the previous chunk, for every token of a chunk (SPEC §2.2).
    """

    memory: str = "linear"
    depth: int = 2
    expansion: int = 2
    activation: str = "gelu"
    residual: bool = True
    layernorm: bool = False
    zero_output: bool = False
    gated: bool = False
    feature_map: str | None = None
    degree: int = 2
    objective: str = "l2"
    p: float = 3.0
    eps: float = 1e-6
    retention: str = "decay"
    q: float = 4.0
    simplex_scale: float | None = None
    shrink: float = 0.0
    learner: str = "gd"
    window: int = 1
    proximal: bool = False
    relaxation: float = 1.0
    inner_lr_max: float | None = None
    ns_steps: int = 5
    chunk_size: int = 64

    def __post_init__(self) -> None:
        _choice("memory", self.memory, MEMORIES)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("feature_map", self.feature_map, FEATURE_MAPS)
        _choice("objective", self.objective, OBJECTIVES)
        _choice("retention", self.retention, RETENTIONS)
        _choice("learner", self.learner, LEARNERS)
        for name in ("depth", "expansion", "chunk_size", "window", "degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MemoryRule.{name} must be an integer >= 1, got {value!r}")
        if self.memory == "mlp" and self.depth > 4:
            raise ValueError(f"MemoryRule.depth must be in 1..4 for memory='mlp', got {self.depth}")
        if self.gated and (self.memory != "mlp" or self.depth != 2):
            raise ValueError("MemoryRule.gated (Atlas++) needs memory='mlp' and depth=2")
        if self.layernorm and self.memory != "mlp":
            raise ValueError("MemoryRule.layernorm needs memory='mlp'")
        if self.zero_output and (self.memory != "mlp" or self.layernorm or self.retention in ("kl", "lq")):
            raise ValueError("MemoryRule.zero_output needs memory='mlp' without layernorm and with retention "
                             "none / decay / elastic (a LayerNorm of a zero output, Memora's simplex and Moneta's "
                             "accumulator have no zero memory)")
        if not (isinstance(self.ns_steps, int) and self.ns_steps >= 1):
            raise ValueError(f"MemoryRule.ns_steps must be an integer >= 1, got {self.ns_steps!r}")
        if not self.p >= 1:
            raise ValueError(f"MemoryRule.p must be >= 1 (ℓ_p attentional bias), got {self.p!r}")
        if not self.q >= 2:
            raise ValueError(f"MemoryRule.q must be >= 2 (L_q retention: |A|^(q-1) is not differentiable at 0 "
                             f"below 2), got {self.q!r}")
        if not self.eps > 0:
            raise ValueError(f"MemoryRule.eps must be > 0, got {self.eps!r}")
        if self.simplex_scale is not None and not self.simplex_scale > 0:
            raise ValueError(f"MemoryRule.simplex_scale must be None or > 0, got {self.simplex_scale!r}")
        if not self.shrink >= 0:
            raise ValueError(f"MemoryRule.shrink must be >= 0, got {self.shrink!r}")
        if self.retention in LAG_RETENTIONS:
            if self.learner not in ("gd", "omega"):
                raise ValueError(f"MemoryRule.retention={self.retention!r} (Miras) needs learner='gd', "
                                 f"got learner={self.learner!r}")
            if self.window != 1:
                raise ValueError(f"MemoryRule.window must be 1 with retention={self.retention!r}")
        if self.is_dgd and self.window != 1:
            raise ValueError(f"MemoryRule.window must be 1 with learner={self.learner!r}")
        if not 0 < self.relaxation <= 2 or (self.relaxation != 1 and not self.proximal):
            raise ValueError(f"MemoryRule.relaxation must lie in (0, 2] and needs proximal=True, got "
                             f"{self.relaxation!r}")
        if self.inner_lr_max is not None:
            if not self.is_dgd or self.memory != "mlp" or self.depth < 2:
                raise ValueError("MemoryRule.inner_lr_max (the step bound of a DGD memory's inner layers) needs "
                                 "learner='dgd' or 'dgd-momentum' and memory='mlp' with depth >= 2")
            if not self.inner_lr_max > 0:
                raise ValueError(f"MemoryRule.inner_lr_max must be None or > 0, got {self.inner_lr_max!r}")
        if self.proximal and (self.feature_map == "exp" or not (self.is_dgd or (
                self.learner in ("gd", "momentum") and self.window == 1))):
            raise ValueError("MemoryRule.proximal (the implicit step) needs learner 'dgd'/'dgd-momentum', or 'gd'/"
                             "'momentum' with window 1, on a parametric memory (not feature_map='exp')")
        if self.feature_map == "exp":
            if self.memory != "linear":
                raise ValueError("MemoryRule.feature_map='exp' (DeepTransformers / Dot) needs memory='linear'")
            if self.objective not in ("dot", "l2") or self.retention not in ("none", "decay") \
                    or self.learner not in ("gd", "omega", "dgd"):
                raise ValueError("MemoryRule.feature_map='exp' supports objective dot/l2, retention none/decay "
                                 "and learner gd/omega/dgd")

    # ------------------------------------------------------------------ shapes
    @property
    def uses_momentum(self) -> bool:
        return self.learner in ("momentum", "muon", "dgd-momentum")

    @property
    def output_layer(self) -> int:
        """The index (in ``state.weights`` order) of the layer whose output is the memory's output."""
        return 0 if self.memory == "linear" or self.depth == 1 else 1 if self.gated else self.depth - 1

    @property
    def is_dgd(self) -> bool:
        return self.learner in ("dgd", "dgd-momentum")

    @property
    def implicit_step(self) -> bool:
        """The implicit step along each token's gradient (``proximal`` with a ``gd``/``momentum`` learner)."""
        return self.proximal and not self.is_dgd

    @property
    def is_lag(self) -> bool:
        return self.retention in LAG_RETENTIONS

    def feature_dim(self, key_dim: int) -> int:
        """Input width of the first memory layer: ``key_dim`` or ``Σ_{i≤p} key_dim^i`` for ``φ_p``."""
        if self.feature_map == "poly":
            return sum(key_dim ** i for i in range(self.degree + 1))
        return key_dim

    def weight_shapes(self, key_dim: int, value_dim: int | None = None) -> list[tuple[int, int]]:
        """``(in, out)`` of every memory weight matrix, in ``state.weights`` order."""
        if self.feature_map == "exp":
            raise ValueError("MemoryRule.feature_map='exp' is a kernel memory: its state holds keys and coefficients "
                             "[K [B, H, N, Dk], C [B, H, N, Dv]], not weight matrices")
        value_dim = key_dim if value_dim is None else value_dim
        d_in = self.feature_dim(key_dim)
        if self.memory == "linear":
            return [(d_in, value_dim)]
        if self.residual and key_dim != value_dim:
            raise ValueError(f"a residual MLP memory needs key dim == value dim, got {key_dim} and {value_dim}")
        hidden = self.expansion * value_dim
        if self.depth == 1:
            return [(d_in, value_dim)]
        if self.gated:
            return [(d_in, hidden), (hidden, value_dim), (d_in, hidden)]
        return [(d_in, hidden)] + [(hidden, hidden)] * (self.depth - 2) + [(hidden, value_dim)]

    def init_state(self, batch: int, heads: int, head_dim: int, value_dim: int | None = None, *,
                   dtype: torch.dtype = torch.float32, device=None,
                   generator: torch.Generator | None = None) -> MemoryState:
        """A fresh state: zeros for the matrix memory, ``N(0, 1/in)`` for MLP layers, the uniform distribution
        for ``kl`` (Memora; as its state, logits 0), zero momentum; no stored keys (``N = 0``) for the ``exp``
        kernel memory. For ``lq`` (Moneta) the state is the accumulator whose memory is that. The MLP draws use
        ``generator``, by default a CPU generator seeded 0: the default state is the same on every call
        (``memorize`` without an ``initial_state`` is a function of its inputs)."""
        if self.feature_map == "exp":
            value_dim = head_dim if value_dim is None else value_dim
            return MemoryState(weights=[torch.zeros(batch, heads, 0, dim, dtype=dtype, device=device)
                                        for dim in (head_dim, value_dim)])
        weights = []
        for d_in, d_out in self.weight_shapes(head_dim, value_dim):
            shape = (batch, heads, d_in, d_out)
            if self.retention == "kl" or self.memory == "linear":
                w = torch.zeros(shape, dtype=dtype, device=device)
            else:
                w = _normal(shape, dtype, device, generator) / math.sqrt(d_in)
                if self.retention == "lq":
                    w = lq_link_inverse(w, self.q, self.eps)
            weights.append(w)
        if self.zero_output:
            weights[self.output_layer] = torch.zeros_like(weights[self.output_layer])
        momentum = [torch.zeros_like(w) for w in weights] if self.uses_momentum else None
        return MemoryState(weights=weights, momentum=momentum)


def _normal(shape, dtype, device, generator):
    """``N(0, 1)`` draws from ``generator``, or from a CPU generator seeded 0 (then moved to ``device``)."""
    if generator is None:
        return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device)
    return torch.randn(shape, dtype=dtype, device=device, generator=generator)
