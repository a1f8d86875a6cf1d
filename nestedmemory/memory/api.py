"""``memorize``: the one functional entry point of the memory core, with its argument checks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import torch

from . import chunked, kernel, recurrent
from .maps import memory_of
from .nets import default_poly_coeffs, explicit, forward, poly_features
from .rule import MemoryRule
from .state import MemoryState

MODES = ("chunked", "recurrent")


@dataclass
class Stream:
    """Inputs in the internal layout ``[B, H, T, ...]``; keys, values, thresholds and shifts are prefixed by
    the ``halo`` tokens the state carries for the Omega window. Gates are ``[B, H, T, G]`` (``G`` = 1 or D)."""

    q: torch.Tensor
    q_raw: torch.Tensor
    k: torch.Tensor
    k_raw: torch.Tensor
    v: torch.Tensor
    threshold: torch.Tensor | None
    shift: torch.Tensor | None
    lr: torch.Tensor
    retain: torch.Tensor
    momentum: torch.Tensor | None
    window: torch.Tensor | None
    halo: int
    soup: tuple | None = None

    def token_kwargs(self, index):
        """Objective arguments (Huber threshold, value shift) of the stream positions ``index``."""
        return {"threshold": None if self.threshold is None else self.threshold[:, :, index],
                "shift": None if self.shift is None else self.shift[:, :, index]}


def memorize(q, k, v, rule: MemoryRule, *, lr, decay=None, momentum=None, threshold=None, shift=None,
             window_gates=None, feature_coeffs=None, feature_scale=None, initial_state: MemoryState | None = None,
             output_final_state: bool = False, mode: str = "chunked", soup=None):
    """Write ``(k_t, v_t)`` into the memory and read it with ``q_t`` after each write (SPEC §2.2).

    ``q, k``: ``[B, T, H, D]``; ``v``: ``[B, T, H, Dv]``. Gates are ``[B, T, H]`` (per head) or
    ``[B, T, H, Dv]`` (channel-wise, acting on the memory's output channels; matrix memory with ``decay`` or
    no retention only), or Python floats: ``lr`` = θ_t, ``decay`` = α_t (forget rate, ``W ← (1−α_t) W``),
    ``momentum`` = η_t; ``threshold`` = Yaad's δ_t and ``shift`` = Δ_t are ``[B, T, H]``;
    ``window_gates`` = γ_{t,r} ``[B, T, H, window]``, the weight of token ``t − r`` in step ``t``'s Omega
    objective (default 1); ``feature_coeffs`` = ``a_i`` of ``φ_p``, ``[p+1]`` or ``[H, p+1]`` (default 1/i!);
    ``feature_scale`` = ``s`` of the ``exp`` map, a float or ``[H]``, ``s > 0`` (default 1): keys and queries enter
    ``φ*`` as ``√s x``, so the kernel is ``φ*(√s q)·φ*(√s k) = exp(s q·k)`` (an inverse temperature, as
    softmax attention's ``1/√d``) in the reads and in the writes alike; the state stores the scaled keys.
    ``soup = (γ [B, T, H], cached, γ_n [N, B, T, H])`` reads Memory Soup's per-token memory
    ``γ_t W_t + Σ_n γ_{t,n} W^{(n)}`` instead of ``W_t`` (MC Eq. 14–15), ``cached`` a :class:`MemoryState` of
    ``N`` chunk-boundary states stacked ``[N, B, H, in, out]`` (Memory Caching's cached memories); writes unchanged.

    Returns ``(o, final_state)`` with ``o``: ``[B, T, H, Dv]`` in ``q.dtype`` (memory math runs in at least
    fp32) and ``final_state`` a :class:`MemoryState` (``None`` unless ``output_final_state``). Both modes
    compute the same function: ``recurrent`` token by token (literal equations, autograd for ∇ℓ), ``chunked``
    chunk-parallel (dual form). A state returned mid-chunk resumes exactly where it stopped.
    """
    if not isinstance(rule, MemoryRule):
        raise TypeError(f"rule must be a MemoryRule, got {type(rule).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; choose one of {list(MODES)}")
    stream, state = _prepare(q, k, v, rule, lr=lr, decay=decay, momentum=momentum, threshold=threshold,
                             shift=shift, window_gates=window_gates, feature_coeffs=feature_coeffs,
                             feature_scale=feature_scale, initial_state=initial_state)
    if soup is not None:
        stream.soup = _soup(soup, rule, q, stream.q.dtype)
    if rule.feature_map == "exp":
        run = kernel.run_recurrent if mode == "recurrent" else kernel.run_chunked
    elif mode == "recurrent":
        run = recurrent.run
    elif q.shape[1] == 1:  # one token (decoding): the direct step, no chunk grid and no autograd
        run = partial(recurrent.run, autograd=False)
    else:
        run = chunked.run
    with torch.autocast(device_type=q.device.type, enabled=False):  # memory math stays in >= fp32
        out, state = run(rule, stream, state)
    out = out.transpose(1, 2).to(q.dtype)
    if not output_final_state:
        return out, None
    keep = rule.window - 1
    if keep:
        state.halo = {name: t[:, :, -keep:] for name, t in
                      (("k", stream.k_raw), ("v", stream.v), ("threshold", stream.threshold),
                       ("shift", stream.shift)) if t is not None}
    return out, state


def recall(q, rule: MemoryRule, state: MemoryState, *, feature_coeffs=None, feature_scale=None):
    """``M(q_t)`` ``[..., B, T, H, Dv]``: the memory of ``state`` read at the queries ``q`` ``[B, T, H, D]`` without
    a write (Titans Eq. 15, "forward pass without weight update"), through the rule's feature map and memory (at a
    chunk boundary Moneta's accumulator and Memora's logits through their maps, ``memory_of``). Axes before
    ``[B, H]`` of the state's weights broadcast: a stack of ``N`` states ``[N, B, H, in, out]`` is read in one call.
    Equals ``memorize``'s read with zero lr, decay and momentum for every retention but ``elastic`` (whose soft
    threshold shrinks the memory even then); memory math in at least fp32."""
    if not isinstance(rule, MemoryRule):
        raise TypeError(f"rule must be a MemoryRule, got {type(rule).__name__}")
    if not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState, got {type(state).__name__}")
    _check_qkv(q, q, q)
    dtype = torch.promote_types(q.dtype, torch.float32)
    features = _features(rule, feature_coeffs, feature_scale, q, dtype)
    q_raw = q.transpose(1, 2).to(dtype)
    weights = [w.to(dtype) for w in state.weights]
    weights = memory_of(rule, weights) if state.offset == 0 else weights
    with torch.autocast(device_type=q.device.type, enabled=False):
        if rule.feature_map == "exp":
            out = kernel.read(weights, features(q_raw))
        else:
            out = forward(rule, features(q_raw), q_raw, explicit(weights))[0]
    return out.transpose(-2, -3).to(q.dtype)


# ---------------------------------------------------------------------------------------------- checks
def _value_checks(t: torch.Tensor) -> bool:
    """Whether to check the values of ``t`` (not only its shape): on the CPU, outside ``torch.compile``'s tracing.
    On an accelerator reading a value back stalls the device's queue on every call (a host sync per layer and
    token), and under tracing it splits the graph; the layers' own arguments are in range by construction."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _soup(soup, rule, q, dtype):
    """``memorize``'s ``soup`` checked, in the internal layout ``(γ [B, H, T, 1], γ_n [B, H, T, N], weights)``."""
    b, t, h, _ = q.shape
    if rule.feature_map == "exp":
        raise ValueError("soup is not built for the exp kernel memory (its states hold different numbers of keys)")
    if not (isinstance(soup, tuple) and len(soup) == 3 and isinstance(soup[1], MemoryState)):
        raise TypeError("soup must be a tuple (gamma [B, T, H], cached MemoryState, gammas [N, B, T, H])")
    gamma, cached, gammas = soup
    n = gammas.shape[0] if isinstance(gammas, torch.Tensor) else None
    if not isinstance(gamma, torch.Tensor) or tuple(gamma.shape) != (b, t, h) or n is None \
            or tuple(gammas.shape) != (n, b, t, h) or any(w.dim() != 5 or w.shape[0] != n for w in cached.weights):
        raise ValueError(f"soup needs gamma [{b}, {t}, {h}], gammas [N, {b}, {t}, {h}] and cached weights "
                         "[N, B, H, in, out]")
    weights = memory_of(rule, [w.to(dtype) for w in cached.weights])
    return gamma.permute(0, 2, 1).unsqueeze(-1).to(dtype), gammas.permute(1, 3, 2, 0).to(dtype), weights


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, dim], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [batch, seq, heads, dv] matching q's {tuple(q.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _gate(name, value, q, dv, *, channel_ok, last=None):
    """A gate as ``[B, H, T, G]`` (``last`` fixes G, e.g. the window size)."""
    b, t, h, _ = q.shape
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((b, h, t, last or 1), float(value), dtype=q.dtype, device=q.device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a float, got {type(value).__name__}")
    if value.dtype not in (q.dtype, torch.promote_types(q.dtype, torch.float32)):  # bf16 q, fp32 gates: autocast
        raise TypeError(f"{name} has dtype {value.dtype} but q has {q.dtype}")
    if last is not None:
        if tuple(value.shape) != (b, t, h, last):
            raise ValueError(f"{name} must have shape {(b, t, h, last)}, got {tuple(value.shape)}")
        return value.permute(0, 2, 1, 3)
    if tuple(value.shape) == (b, t, h):
        return value.permute(0, 2, 1).unsqueeze(-1)
    if tuple(value.shape) == (b, t, h, dv):
        if not channel_ok:
            raise ValueError(f"channel-wise {name} {tuple(value.shape)} needs memory='linear' (no 'exp' feature map) "
                             f"with retention 'decay' or 'none' and learner 'gd'/'omega'/'momentum'; pass {(b, t, h)}")
        return value.permute(0, 2, 1, 3)
    raise ValueError(f"{name} must have shape {(b, t, h)} or {(b, t, h, dv)}, got {tuple(value.shape)}")


def _token_value(name, value, q):
    """Yaad's threshold / the value shift as ``[B, H, T]``."""
    return _gate(name, value, q, None, channel_ok=False).squeeze(-1)


def _check_state(state, rule, q, v, dtype):
    b, _, h, d = q.shape
    if state is None:
        return rule.init_state(b, h, d, v.shape[-1], dtype=dtype, device=q.device)
    if not isinstance(state, MemoryState):
        raise TypeError(f"initial_state must be a MemoryState, got {type(state).__name__}")
    shapes = None if rule.feature_map == "exp" else rule.weight_shapes(d, v.shape[-1])

    def fit(name, tensors):
        if tensors is None:
            return None
        if shapes is None:
            return _fit_kernel(name, tensors, b, h, (d, v.shape[-1]), dtype)
        if len(tensors) != len(shapes):
            raise ValueError(f"initial_state.{name} has {len(tensors)} matrices, the rule needs {len(shapes)}")
        out = []
        for i, (w, (d_in, d_out)) in enumerate(zip(tensors, shapes)):
            if tuple(w.shape[-2:]) != (d_in, d_out) or w.dim() not in (3, 4) or w.shape[-3] != h \
                    or (w.dim() == 4 and w.shape[0] not in (1, b)):
                raise ValueError(f"initial_state.{name}[{i}] must be [{b}, {h}, {d_in}, {d_out}] "
                                 f"(or [{h}, {d_in}, {d_out}]), got {tuple(w.shape)}")
            out.append(w.to(dtype).expand(b, h, d_in, d_out))
        return out

    momentum = fit("momentum", state.momentum)
    if rule.uses_momentum and momentum is None:
        momentum = [torch.zeros(b, h, i, o, dtype=dtype, device=q.device) for i, o in shapes]
    if state.offset and state.anchor is None:
        raise ValueError("initial_state.offset > 0 needs initial_state.anchor")
    if not 0 <= state.offset < rule.chunk_size:
        raise ValueError(f"initial_state.offset={state.offset} is outside the chunk (chunk_size={rule.chunk_size})")
    return replace(state, weights=fit("weights", state.weights), momentum=momentum,
                   anchor=fit("anchor", state.anchor), halo=dict(state.halo))


def _fit_kernel(name, pair, b, h, dims, dtype):
    """The ``exp`` memory's ``[K [B, H, N, Dk], C [B, H, N, Dv]]`` (or ``[H, N, ·]``; any ``N``), checked and
    broadcast over the batch."""
    if len(pair) != 2 or any(t.dim() not in (3, 4) for t in pair):
        raise ValueError(f"initial_state.{name} of the exp kernel memory must be [keys [{b}, {h}, N, {dims[0]}], "
                         f"coefficients [{b}, {h}, N, {dims[1]}]]")
    n = pair[0].shape[-2]
    for i, (t, width) in enumerate(zip(pair, dims)):
        if tuple(t.shape[-3:]) != (h, n, width) or (t.dim() == 4 and t.shape[0] not in (1, b)):
            raise ValueError(f"initial_state.{name}[{i}] of the exp kernel memory must be [{b}, {h}, {n}, {width}] "
                             f"(or [{h}, {n}, {width}]), got {tuple(t.shape)}")
    return [t.to(dtype).expand(b, h, n, width) for t, width in zip(pair, dims)]


def _prepare(q, k, v, rule, *, lr, decay, momentum, threshold, shift, window_gates, feature_coeffs,
             feature_scale, initial_state):
    _check_qkv(q, k, v)
    dv = v.shape[-1]
    channel_ok = rule.memory == "linear" and rule.feature_map != "exp" and rule.retention in ("decay", "none") \
        and rule.learner in ("gd", "omega", "momentum")
    if lr is None:
        raise ValueError("lr (the inner learning rate θ_t) is required")
    lr = _gate("lr", lr, q, dv, channel_ok=channel_ok)
    if rule.retention == "none":
        if decay is not None:
            raise ValueError("decay was given but MemoryRule.retention='none'")
        retain = torch.ones_like(lr[..., :1])
    else:
        retain = 1 - _gate("decay", 0.0 if decay is None else decay, q, dv, channel_ok=channel_ok)
    if rule.uses_momentum:
        if momentum is None:
            raise ValueError(f"momentum (η_t) is required with learner={rule.learner!r}")
        momentum = _gate("momentum", momentum, q, dv, channel_ok=channel_ok)
    elif momentum is not None:
        raise ValueError(f"momentum was given but learner={rule.learner!r} has none")
    if (threshold is None) != (rule.objective != "huber"):
        raise ValueError("threshold (Yaad's δ_t) is required with objective='huber' and only then")
    if (shift is None) != (rule.objective != "robust"):
        raise ValueError("shift (Δ_t) is required with objective='robust' and only then")
    threshold = None if threshold is None else _token_value("threshold", threshold, q)
    shift = None if shift is None else _token_value("shift", shift, q)
    if window_gates is not None:
        if rule.window == 1:
            raise ValueError("window_gates were given but MemoryRule.window=1")
        window_gates = _gate("window_gates", window_gates, q, dv, channel_ok=False, last=rule.window)
    elif rule.window > 1:
        window_gates = torch.ones_like(lr[..., :1]).expand(*lr.shape[:3], rule.window)

    dtype = torch.promote_types(q.dtype, torch.float32)
    state = _check_state(initial_state, rule, q, v, dtype)
    features = _features(rule, feature_coeffs, feature_scale, q, dtype)

    def layout(t):  # [B, T, H, D] -> [B, H, T, D], contiguous: each chunk's products then need no copies
        return t.transpose(1, 2).to(dtype).contiguous()

    def halo_cat(name, t):
        if t is None:
            return None
        t = t.to(dtype)
        old = state.halo.get(name)
        return t if old is None else torch.cat([old.to(dtype), t], dim=2)

    q_raw, k_raw = layout(q), halo_cat("k", layout(k))
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    stream = Stream(q=features(q_raw), q_raw=q_raw, k=features(k_raw), k_raw=k_raw,
                    v=halo_cat("v", layout(v)), threshold=halo_cat("threshold", threshold),
                    shift=halo_cat("shift", shift), lr=cast(lr), retain=cast(retain), momentum=cast(momentum),
                    window=cast(window_gates), halo=k_raw.shape[2] - q.shape[1])
    return stream, state


def _features(rule, feature_coeffs, feature_scale, q, dtype):
    """The feature map ``φ`` of the rule's keys and queries (``[B, H, T, D]`` in, features out), its parameters
    checked: ``poly``'s ``a_i`` (default ``1/i!``), the ``exp`` map's ``√s`` per head, else the identity."""
    if rule.feature_map == "poly":
        if feature_coeffs is None:
            feature_coeffs = default_poly_coeffs(rule.degree, dtype, q.device)
        if not isinstance(feature_coeffs, torch.Tensor) or feature_coeffs.shape[-1] != rule.degree + 1 \
                or feature_coeffs.dim() not in (1, 2) or \
                (feature_coeffs.dim() == 2 and feature_coeffs.shape[0] != q.shape[2]):
            raise ValueError(f"feature_coeffs must be a tensor [{rule.degree + 1}] or "
                             f"[{q.shape[2]}, {rule.degree + 1}]")
        if _value_checks(feature_coeffs) and bool((feature_coeffs < 0).any()):
            raise ValueError("feature_coeffs must be >= 0 (they weight the degrees of φ_p)")
    elif feature_coeffs is not None:
        raise ValueError(f"feature_coeffs were given but MemoryRule.feature_map={rule.feature_map!r} has none "
                         "(they weight the degrees of 'poly')")
    if feature_scale is not None:
        if rule.feature_map != "exp":
            raise ValueError(f"feature_scale was given but MemoryRule.feature_map={rule.feature_map!r} has none "
                             "(it scales the 'exp' kernel)")
        feature_scale = torch.as_tensor(feature_scale, dtype=dtype, device=q.device)
        if feature_scale.dim() > 1 or feature_scale.numel() not in (1, q.shape[2]):
            raise ValueError(f"feature_scale must be a float or a tensor [{q.shape[2]}], got shape "
                             f"{tuple(feature_scale.shape)}")
        if _value_checks(feature_scale) and not bool((feature_scale > 0).all()):
            raise ValueError("feature_scale must be > 0 (the exp kernel is exp(s q·k))")
    if rule.feature_map == "poly":
        return lambda x: poly_features(x, rule.degree, feature_coeffs.to(dtype))
    if feature_scale is not None:
        return lambda x: x * feature_scale.sqrt().view(-1, 1, 1)  # √s per head
    return lambda x: x
