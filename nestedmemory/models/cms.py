"""Continuum Memory System, CMS (NL §7.1, Eq. 70-74; SPEC §6.3): a block's MLP becomes ``k`` MLP levels whose
weights are *fast weights*, trained inside the forward pass by the task loss itself.

Level ``ℓ`` (period ``C^{(ℓ)}``) holds SwiGLU weights ``θ^{(ℓ)}`` (one copy per sequence of the batch). Its update
(Eq. 71) is plain gradient descent on the next-token loss, accumulated over its chunk and applied at the chunk end::

    θ^{(ℓ)} ← θ^{(ℓ)} − η^{(ℓ)} Σ_{t in chunk} ∇_θ L_t     when the stream position is ≡ 0 (mod C^{(ℓ)})

so a chunk's update reaches only the tokens after the chunk (causal). ``η^{(ℓ)} = lr_max · σ(s^{(ℓ)})`` is learnable
per level and block; ``η = 0`` is the frozen MLP. The initial weights ``θ_0`` are the modules' ``nn.Parameter`` s,
meta-learned by backpropagating the outer loss *through* the updates (``create_graph``), or first-order
(``first_order=True``: the accumulated gradients are constants for the outer loss).

Because ``L_t`` needs the whole network above the CMS, the loop is model-level (:func:`continuum_forward`): the
stream is cut into *segments* of the smallest period; for each segment every block runs with the current fast
weights (the token mixers carry their state across segments through the ``LayerStates`` cache: prefill in pieces
equals one full forward), the segment's loss is differentiated w.r.t. the fast weights, the gradients are added to
each level's accumulator, and the levels whose period ends there are updated. Inner targets: only the pairs
``(t, t+1)`` with both tokens inside the segment, so nothing after the segment is seen (``P − 1`` terms for a segment
of ``P`` tokens; with padding, pairs whose target is padding are dropped).

Decoding keeps the fast weights, the accumulators, the tokens of the unfinished segment and the mixers' states at its
start (:class:`ContinuumState`, in ``LayerStates.continuum``); when decoding completes a segment, the segment is run
again from those states with gradients on, which gives exactly the full forward's gradient. Token-by-token decoding
with gradients enabled is the recurrent reference of the tests.

Variants (:data:`VARIANTS`): ``sequential`` (Eq. 73, the default): ``y = MLP^{(f_k)}(… MLP^{(f_1)}(x))`` with residual
levels ``MLP^{(ℓ)}(u) = u + SwiGLU_ℓ(u)``, all initial states meta-learned by the outer loop; ``independent``
(head-wise, Eq. 74): ``y = Agg(SwiGLU_k(x), …, SwiGLU_1(x))``, ``Agg`` a learnable weighted sum (initially the
mean); ``nested`` (Eq. 72): the sequential chain where level ``ℓ``'s weights restart, at every boundary of the next
(slower) level, from an initial state that the slower level learns: that state is updated at the slower level's
period with its step and the gradients of level ``ℓ`` accumulated over the slower chunk (a first-order meta-gradient).
The block adds the CMS output minus its input: ``h ← h + (CMS(RMSNorm(h)) − RMSNorm(h))``, so one level is exactly
the Llama MLP (a Transformer is CMS with ``k = 1`` and frequency 0).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..layers import LayerStates
from ..layers.common import logit, residual_output

VARIANTS = ("sequential", "independent", "nested")
#: a ``cms`` config's keys and defaults (the presets set ``periods`` by size).
OPTIONS = dict(periods=[4, 16], variant="sequential", lr_init=1e-3, lr_max=0.1, first_order=False)


def check_options(cms: dict) -> dict:
    """``cms`` with the defaults filled in, or a ``ValueError`` naming the key."""
    if not isinstance(cms, dict):
        raise ValueError(f"must be a dict or None, got {type(cms).__name__}")
    unknown = set(cms) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; the keys are {sorted(OPTIONS)}")
    options = dict(OPTIONS, **cms)
    periods = options["periods"]
    if (not isinstance(periods, (list, tuple)) or not periods
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 2 for c in periods)):
        raise ValueError(f"periods must be a non-empty list of integers >= 2 (a segment needs two tokens for "
                         f"its next-token loss), got {periods!r}")
    if any(c % min(periods) for c in periods):
        raise ValueError(f"periods must all be multiples of the smallest (its segments carry every update), got "
                         f"{periods!r}")
    if options["variant"] not in VARIANTS:
        raise ValueError(f"variant={options['variant']!r}; choose one of {list(VARIANTS)}")
    if options["variant"] == "nested" and list(periods) != sorted(periods):
        raise ValueError(f"periods must increase along the chain for variant='nested', got {periods!r}")
    if not (isinstance(options["lr_max"], (int, float)) and 0 < options["lr_max"]):
        raise ValueError(f"lr_max must be > 0, got {options['lr_max']!r}")
    if not (isinstance(options["lr_init"], (int, float)) and 0 <= options["lr_init"] < options["lr_max"]):
        raise ValueError(f"lr_init must lie in [0, lr_max={options['lr_max']}), got {options['lr_init']!r}")
    if not isinstance(options["first_order"], bool):
        raise ValueError(f"first_order must be a bool, got {options['first_order']!r}")
    options["periods"] = list(periods)
    return options


def _fp32_or_wider(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class SwiGLU(nn.Module):
    """``W_down(SiLU(x W_gate) ⊙ x W_up)`` (Llama's MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = residual_output(nn.Linear(hidden, dim, bias=False))

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def swiglu(x, weights):
    """:class:`SwiGLU` with explicit weights ``(gate, up, down)`` in ``nn.Linear`` layout, batched ``[B, out, in]``
    (one fast-weight copy per sequence) or not."""
    gate, up, down = weights
    return (F.silu(x @ gate.mT) * (x @ up.mT)) @ down.mT


class ContinuumMemory(nn.Module):
    """The CMS of one block: ``len(periods)`` SwiGLU levels (their weights are the meta-learned initial fast weights
    ``θ_0``), the steps ``η^{(ℓ)} = lr_max · σ(step_ℓ)`` and, for ``independent``, the ``Agg`` weights."""

    def __init__(self, dim: int, hidden: int, periods, variant: str = "sequential", lr_init: float = 1e-3,
                 lr_max: float = 0.1, first_order: bool = False):
        super().__init__()
        self.periods, self.variant, self.lr_max, self.first_order = list(periods), variant, lr_max, first_order
        self.levels = nn.ModuleList(SwiGLU(dim, hidden) for _ in self.periods)
        start = logit(lr_init / lr_max) if lr_init > 0 else -math.inf  # lr_init = 0: exactly frozen
        self.step = nn.Parameter(torch.full((len(self.periods),), start))
        if variant == "independent":
            self.agg = nn.Parameter(torch.full((len(self.periods),), 1 / len(self.periods)))

    def lr(self) -> torch.Tensor:
        """``η^{(ℓ)}`` for every level, in the fast weights' dtype."""
        return self.lr_max * torch.sigmoid(self.step.to(_fp32_or_wider(self.step.dtype)))

    def initial_weights(self) -> list[list[torch.Tensor]]:
        """``θ_0``: per level ``[gate, up, down]``, in fp32 (or wider: fast weights stay fp32 in a bf16 model)."""
        return [[m.weight.to(_fp32_or_wider(m.weight.dtype)) for m in (level.gate_proj, level.up_proj, level.down_proj)]
                for level in self.levels]

    def forward(self, x, weights=None):
        """``CMS(x) − x`` for ``x`` ``[B, T, dim]`` with fast weights ``weights`` (``[B, out, in]`` per matrix;
        ``None``: the initial weights, i.e. the frozen MLP levels). Computed in fp32 (also under autocast)."""
        weights = self.initial_weights() if weights is None else weights
        with torch.autocast(x.device.type, enabled=False):
            u = x.to(weights[0][0].dtype)
            if self.variant == "independent":  # Eq. 74, Agg = weighted sum
                out = sum(a * swiglu(u, w) for a, w in zip(self.agg.to(u.dtype), weights))
            else:  # Eq. 73 (and 72): MLP^{(f_k)}(… MLP^{(f_1)}(x)), each level residual
                out = 0
                for w in weights:
                    branch = swiglu(u, w)
                    u, out = u + branch, out + branch
        return out.to(x.dtype)


@dataclass
class ContinuumState:
    """The CMS part of the decoding cache (``LayerStates.continuum``), all per block, per level:

    ``weights``: the fast weights ``θ^{(ℓ)}`` (``[gate, up, down]``, ``[B, out, in]``, fp32); ``grads``: the
    gradient accumulated since the level's last update (``None``: zero); ``inits`` / ``init_grads``: for
    ``nested``, the initial state the level restarts from and its accumulated gradient (``None`` otherwise);
    ``segment``: the tokens ``[B, n]`` of the unfinished segment (``n`` < the smallest period); ``start``: the
    mixers' states at that segment's start (to re-run it with gradients when it completes)."""

    weights: list
    grads: list
    inits: list | None
    init_grads: list | None
    segment: torch.Tensor
    start: LayerStates | None


def _initial_state(model, input_ids) -> ContinuumState:
    b = input_ids.shape[0]
    weights = [[[w.expand(b, *w.shape) for w in level] for level in layer.mlp.initial_weights()]
               for layer in model.layers]
    nested = model.layers[0].mlp.variant == "nested"
    return ContinuumState(weights=weights, grads=[[None] * len(w) for w in weights],
                          inits=weights if nested else None,
                          init_grads=[[None] * len(w) for w in weights] if nested else None,
                          segment=input_ids[:, :0], start=None)


def _run_blocks(model, input_ids, mixers: LayerStates, weights):
    """The final hidden states (after the last RMSNorm) of ``input_ids`` continuing ``mixers`` (updated in place,
    as with ``use_cache``), every block's CMS reading ``weights``."""
    hidden = model.embeddings(input_ids)
    for layer, w in zip(model.layers, weights):
        hidden, _ = layer(hidden, None, mixers, True, w)
    return model.norm(hidden)


def _differentiable(weights, outer: bool):
    """The fast weights as fresh tensors used by this segment's forward only, so that the inner gradient is
    ``∇_θ`` of the segment's loss through this segment's computation (the earlier segments' states are context,
    even when they were computed with the same ``θ``): identity views when the outer loss will backpropagate
    through them, else new leaves."""
    return [[[w.view_as(w) if outer and w.requires_grad else w.detach().requires_grad_() for w in level]
             for level in block] for block in weights]


def _task_loss(head, hidden, input_ids, real):
    """``Σ_t L_t``: next-token cross-entropy summed over the pairs inside the piece (targets that are padding
    dropped). A sum over the batch too: each sequence's fast weights get their own sequence's gradient."""
    logits = head(hidden[:, :-1])
    logits = logits.to(_fp32_or_wider(logits.dtype))
    loss = F.cross_entropy(logits.flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none")
    return (loss if real is None else loss * real[:, 1:].flatten().to(loss)).sum()


def _accumulate(accumulated, new):
    """Per block, per level: ``accumulated + new`` (``None`` is zero)."""
    return [[a if n is None else n if a is None else [x + y for x, y in zip(a, n)] for a, n in zip(acc, add)]
            for acc, add in zip(accumulated, new)]


def _update(done, cms, weights, grads, inits, init_grads):
    """One block's levels after the stream position ``done``: level ``ℓ`` takes its step ``θ ← θ − η^{(ℓ)} Σ∇``
    when ``done ≡ 0 (mod C^{(ℓ)})`` (Eq. 71); for ``nested`` (Eq. 72), at a boundary of level ``ℓ + 1`` the initial
    state of level ``ℓ`` takes the step of level ``ℓ + 1`` with the gradients of level ``ℓ`` over that longer
    chunk, and level ``ℓ`` restarts from it."""
    lr, periods = cms.lr(), cms.periods
    weights, grads = list(weights), list(grads)
    for i, c in enumerate(periods):
        if done % c == 0 and grads[i] is not None:
            weights[i] = [w - lr[i] * g for w, g in zip(weights[i], grads[i])]
            grads[i] = None
    if inits is not None:
        inits, init_grads = list(inits), list(init_grads)
        for i, c in enumerate(periods[1:]):
            if done % c == 0 and init_grads[i] is not None:
                inits[i] = [w - lr[i + 1] * g for w, g in zip(inits[i], init_grads[i])]
                weights[i], grads[i], init_grads[i] = inits[i], None, None
    return weights, grads, inits, init_grads


def continuum_forward(model, head, input_ids, attention_mask=None, cache: LayerStates | None = None,
                      use_cache: bool = False):
    """The final hidden states ``[B, T, dim]`` of a model whose blocks' MLPs are :class:`ContinuumMemory`, with
    the in-context CMS updates (NL Eq. 71) — see the module docstring. ``model`` is a ``NestedMemoryModel``,
    ``head`` maps hidden states to logits (the LM head, for the task loss). ``cache`` is read; with ``use_cache``
    it is advanced (mixers' states and :class:`ContinuumState`), its ``seen_tokens`` left to the caller."""
    if attention_mask is not None and not bool(attention_mask.all()):
        if use_cache or cache is not None:
            raise NotImplementedError("the CMS does not support padded batches with a decoding cache; generate one "
                                      "sequence (or equal-length sequences) at a time")
        # as layers.left_aligned, on the token ids: padding moved to the end (where causality hides it), so the
        # update grid starts at each sequence's first token
        real = attention_mask[:, -input_ids.shape[1]:]
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)
        shift = (1 - real).sum(1, keepdim=True)
        forward, back = (steps + shift) % input_ids.shape[1], (steps - shift) % input_ids.shape[1]
        hidden = _segments(model, head, input_ids.gather(1, forward), real.gather(1, forward), None, False)
        return hidden.gather(1, back.unsqueeze(-1).expand_as(hidden))
    return _segments(model, head, input_ids, None, cache, use_cache)


def _segments(model, head, input_ids, real, cache, use_cache):
    if torch.is_grad_enabled() and not model.layers[0].mlp.first_order:
        # the outer gradient differentiates the inner gradients: SDPA's fused CPU/GPU backwards are not
        # differentiable twice, its composite (math) form is
        with sdpa_kernel(SDPBackend.MATH):
            return _segment_loop(model, head, input_ids, real, cache, use_cache)
    return _segment_loop(model, head, input_ids, real, cache, use_cache)


def _segment_loop(model, head, input_ids, real, cache, use_cache):
    cmss = [layer.mlp for layer in model.layers]
    periods, nested = cmss[0].periods, cmss[0].variant == "nested"
    segment_length = min(periods)
    outer = torch.is_grad_enabled()  # the outer loss will backpropagate through the updates
    create_graph = outer and not cmss[0].first_order
    mixers = LayerStates() if cache is None else cache.copy()
    state, mixers.continuum = mixers.continuum or _initial_state(model, input_ids), None
    weights, grads, inits, init_grads = state.weights, state.grads, state.inits, state.init_grads
    segment, start_states = state.segment, state.start
    seen, t, outs, start = mixers.seen_tokens, input_ids.shape[1], [], 0
    end = seen + t
    while start < t:
        offset = seen % segment_length
        n = min(segment_length - offset, t - start)
        ids, piece_real = input_ids[:, start:start + n], None if real is None else real[:, start:start + n]
        if offset == 0:
            segment, start_states = ids[:, :0], (mixers.copy() if use_cache else None)
        segment = torch.cat((segment, ids), 1)
        done = seen + n  # the stream position after this piece
        # the levels whose accumulated gradient will still be used: an update before the end, or a cache to go on
        live = [i for i, c in enumerate(periods) if use_cache or math.ceil(done / c) * c < end
                or (nested and i + 1 < len(periods) and math.ceil(done / periods[i + 1]) * periods[i + 1] < end)]
        learn = offset + n == segment_length and bool(live)
        in_place = learn and offset == 0  # the whole segment is in this piece: its own forward gives the loss
        with torch.enable_grad() if in_place else nullcontext():
            used = _differentiable(weights, outer) if in_place else weights
            hidden = _run_blocks(model, ids, mixers, used)
            if in_place:
                loss = _task_loss(head, hidden, ids, piece_real)
        if learn and not in_place:  # decoding completed the segment: run it again from its start, with gradients
            with torch.enable_grad():
                used = _differentiable(weights, outer)
                loss = _task_loss(head, _run_blocks(model, segment, start_states.copy(), used), segment, None)
        if learn:
            wanted = [w for block in used for i in live for w in block[i]]
            found = iter(torch.autograd.grad(loss, wanted, create_graph=create_graph, retain_graph=outer))
            new = [[[next(found) for _ in level] if i in live else None for i, level in enumerate(block)]
                   for block in used]
            grads = _accumulate(grads, new)
            if nested:
                init_grads = _accumulate(init_grads, new)
            blocks = zip(cmss, weights, grads, inits or [None] * len(cmss), init_grads or [None] * len(cmss))
            weights, grads, inits, init_grads = map(list, zip(*(_update(done, *block) for block in blocks)))
            if not nested:
                inits = init_grads = None
        if not outer:
            hidden, mixers = hidden.detach(), mixers.detach()
            weights = [[[w.detach() for w in level] for level in block] for block in weights]
        outs.append(hidden)
        seen, start = done, start + n
        mixers.seen_tokens = seen
    if use_cache:
        cache.states = mixers.states
        cache.continuum = ContinuumState(weights, grads, inits, init_grads,
                                         segment if seen % segment_length else input_ids[:, :0], start_states)
    return torch.cat(outs, 1)


def stack_levels(model, **cms):
    """Ad-hoc level stacking (NL §7.3, ``MLP_0^{(f_ℓ)} = MLP_pretrained``): the model of ``model``'s config with
    ``cms`` (options as the config's ``cms``), every block's CMS levels initialised from that block's SwiGLU, every
    other weight copied. ``independent``: the MLP in every level (Agg starts as the mean, so the sum is the MLP);
    ``sequential`` / ``nested``: the MLP in the first level and, in the later levels, its gate and up projections
    with a zero down projection (a residual level that starts as the identity). Either way, until the first update
    (and forever with ``lr_init=0``) the new model computes exactly what ``model`` does."""
    if model.config.cms is not None:
        raise ValueError("stack_levels converts a model whose MLPs are plain SwiGLUs (config.cms is None)")
    config = type(model.config).from_dict(dict(model.config.to_dict(), cms=cms))
    stacked = type(model)(config).to(model.dtype)
    state = stacked.state_dict()
    for key, value in model.state_dict().items():
        if ".mlp." not in key:
            state[key] = value
            continue
        head, name = key.split(".mlp.")
        for i in range(len(config.cms["periods"])):
            zero = config.cms["variant"] != "independent" and i > 0 and name.startswith("down_proj")
            state[f"{head}.mlp.levels.{i}.{name}"] = torch.zeros_like(value) if zero else value
    stacked.load_state_dict(state)
    return stacked
