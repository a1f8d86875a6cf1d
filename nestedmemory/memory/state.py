"""The recurrent state of an associative memory, enough to resume anywhere inside a chunk."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class MemoryState:
    """State after ``t`` tokens of one memory layer (all tensors ``[B, H, ...]``).

    ``weights``: the memory as it is read, ``W_t`` (one ``[B, H, in, out]`` matrix per layer). For ``lq``
    (Moneta) at a chunk boundary it holds the accumulator ``A`` (the memory is then ``sign(A)|A|^{q−1} / ‖A‖_q^{q−2}``),
    for ``kl`` (Memora) the logits ``Z`` (the memory is ``c · softmax(Z)`` over the output axis). For the
    ``exp`` kernel memory it is ``[K [B, H, N, Dk], C [B, H, N, Dv]]``, ``W = Σ_n φ*(K_n)ᵀ C_n`` (N grows with
    every write; ``anchor`` has the same form).
    ``momentum``: ``S_t`` for ``momentum``/``muon`` learners. ``offset``: tokens already taken in the current
    chunk; when it is not 0, ``anchor`` holds the gradient point of that chunk (the memory at its start, or
    after its lag token), ``lag_acc`` Moneta's accumulator (Memora's logits) after the lag token and ``lag_decay``
    the decay product since the lag token. ``halo`` holds the last ``window − 1`` ``(k, v, threshold, shift)`` tokens
    ``[B, w, H, ...]`` for the Omega rule.
    """

    weights: list[torch.Tensor]
    momentum: list[torch.Tensor] | None = None
    offset: int = 0
    anchor: list[torch.Tensor] | None = None
    lag_acc: list[torch.Tensor] | None = None
    lag_decay: torch.Tensor | None = None
    halo: dict[str, torch.Tensor] = field(default_factory=dict)

    def detach(self) -> "MemoryState":
        """The same state with every tensor detached (for truncated backpropagation through time)."""
        def d(x):
            if x is None:
                return None
            if isinstance(x, list):
                return [t.detach() for t in x]
            return x.detach()
        return replace(self, weights=d(self.weights), momentum=d(self.momentum), anchor=d(self.anchor),
                       lag_acc=d(self.lag_acc), lag_decay=d(self.lag_decay),
                       halo={k: v.detach() for k, v in self.halo.items()})
