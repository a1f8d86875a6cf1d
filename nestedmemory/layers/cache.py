"""The decoding state of a stack of token mixers: one entry per layer, whatever that layer needs."""

from __future__ import annotations

import dataclasses

import torch


class LayerStates:
    """``states[layer_idx]`` is a dict owned by that layer (recurrent memory state, conv window, bounded KV
    window, ...), or ``None`` before the layer has seen a token. ``seen_tokens`` counts positions processed
    (padding included). Layers read their entry at the start of ``forward`` and write it back with :meth:`update`
    when ``use_cache`` is set (they replace entries, never change them in place, so a shallow copy is a snapshot).
    ``continuum``: the model-level state of a Continuum Memory System (:mod:`nestedmemory.models.cms`), or
    ``None``."""

    is_compileable = False

    def __init__(self):
        self.states: dict[int, dict] = {}
        self.seen_tokens = 0
        self.continuum = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions processed so far (the ``transformers`` cache interface)."""
        return self.seen_tokens

    def __getitem__(self, layer_idx: int) -> dict | None:
        return self.states.get(layer_idx)

    def update(self, layer_idx: int, state: dict) -> None:
        self.states[layer_idx] = state

    def __len__(self) -> int:
        return len(self.states)

    def copy(self) -> LayerStates:
        """A snapshot: a new ``LayerStates`` sharing the (never mutated) entries."""
        other = LayerStates()
        other.states, other.seen_tokens, other.continuum = dict(self.states), self.seen_tokens, self.continuum
        return other

    def detach(self) -> LayerStates:
        """The same states with every tensor detached from the autograd graph (entries may nest dicts, lists,
        tuples, dataclasses such as ``MemoryState`` and ``LayerStates``)."""
        other = self.copy()
        other.states, other.continuum = _detached(self.states), _detached(self.continuum)
        return other


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, LayerStates):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _detached(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value
