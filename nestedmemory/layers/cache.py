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
    ``None``. ``rows``: for a left-padded batch decoded row by row, one ``LayerStates`` per row (each row's chunk
    grids start at its own first token), else ``None``."""

    is_compileable = False

    def __init__(self):
        self.states: dict[int, dict] = {}
        self.seen_tokens = 0
        self.continuum = None
        self.rows: list[LayerStates] | None = None

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
        other.rows = None if self.rows is None else [row.copy() for row in self.rows]
        return other

    def detach(self) -> LayerStates:
        """The same states with every tensor detached from the autograd graph (entries may nest dicts, lists,
        tuples, dataclasses such as ``MemoryState`` and ``LayerStates``)."""
        return self._mapped(lambda t: t.detach())

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Keep, for row ``i`` of the batch, the state of row ``beam_idx[i]`` (beam search's cache reordering,
        ``transformers``' ``Cache.reorder_cache`` interface). Tensors whose first axis is 1 are shared by every
        row (learnable initial states not yet written) and stay as they are; entries are replaced, so snapshots
        taken before are unchanged."""
        if self.rows is not None:  # row by row: each row's own states, batch size 1
            self.rows = [self.rows[i].copy() for i in beam_idx.tolist()]
            return
        rows = len(beam_idx)
        reordered = self._mapped(lambda t: t.index_select(0, beam_idx.to(t.device)) if t.shape[:1] == (rows,) else t)
        self.states, self.continuum = reordered.states, reordered.continuum

    def _mapped(self, fn) -> LayerStates:
        """A copy with ``fn`` applied to every tensor of every entry (and of nested ``LayerStates``)."""
        other = self.copy()
        other.states, other.continuum = _mapped(self.states, fn), _mapped(self.continuum, fn)
        other.rows = None if self.rows is None else [row._mapped(fn) for row in self.rows]
        return other


def _mapped(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, LayerStates):
        return value._mapped(fn)
    if isinstance(value, dict):
        return {k: _mapped(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mapped(v, fn) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _mapped(getattr(value, f.name), fn)
                                             for f in dataclasses.fields(value) if f.init})
    return value
