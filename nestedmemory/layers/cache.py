"""The decoding state of a stack of token mixers: one entry per layer, whatever that layer needs."""

from __future__ import annotations


class LayerStates:
    """``states[layer_idx]`` is a dict owned by that layer (recurrent memory state, conv window, bounded KV
    window, ...), or ``None`` before the layer has seen a token. ``seen_tokens`` counts positions processed
    (padding included). Layers read their entry at the start of ``forward`` and write it back with :meth:`update`
    when ``use_cache`` is set."""

    is_compileable = False

    def __init__(self):
        self.states: dict[int, dict] = {}
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions processed so far (the ``transformers`` cache interface)."""
        return self.seen_tokens

    def __getitem__(self, layer_idx: int) -> dict | None:
        return self.states.get(layer_idx)

    def update(self, layer_idx: int, state: dict) -> None:
        self.states[layer_idx] = state

    def __len__(self) -> int:
        return len(self.states)
