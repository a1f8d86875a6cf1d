"""A text corpus as a language-modelling data set: the first ``val_tokens`` tokens are the validation split; the
rest is packed into ``seq_len`` blocks, shuffled and batched, epoch after epoch, as one deterministic stream of
batches (a pure function of the seed), so a run resumes at batch ``k`` by replaying the stream — tokenizing
again, no model work — without holding the corpus in memory."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .files import documents
from .packing import batched, pack, shuffled, skip_tokens, take_tokens, token_chunks

__all__ = ["TextData"]


@dataclass
class TextData:
    """``path`` / ``text_field``: see :func:`~nestedmemory.data.files.documents`; ``separator`` goes between
    documents. Each epoch starts the packing at a random offset (< ``seq_len``) into the training split, so the
    blocks differ between epochs, and shuffles them through a buffer of ``shuffle_buffer`` blocks."""

    path: str
    tokenizer: object
    seq_len: int
    val_tokens: int
    text_field: str = "text"
    separator: str = "\n\n"
    shuffle_buffer: int = 1024

    def __post_init__(self):
        for name in ("seq_len", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_tokens < 0:
            raise ValueError(f"val_tokens must be >= 0, got {self.val_tokens}")
        needed = self.val_tokens + 2 * self.seq_len  # so that every epoch has a training block
        available = sum(len(chunk) for chunk in take_tokens(self.chunks(), needed))
        if available < needed:
            raise ValueError(f"{self.path} has {available} tokens (with separators); it needs val_tokens + "
                             f"2 · seq_len = {needed}")

    def chunks(self) -> Iterator[np.ndarray]:
        """The whole token stream."""
        return token_chunks(documents(self.path, self.text_field), self.tokenizer, self.separator)

    def validation_tokens(self) -> np.ndarray:
        return np.concatenate([np.empty(0, dtype=np.int64), *take_tokens(self.chunks(), self.val_tokens)])

    def validation_batches(self, batch_size: int) -> list[torch.Tensor]:
        """The validation split as full ``[batch_size, seq_len]`` batches (a final partial batch is dropped, so
        every batch splits evenly over processes)."""
        return list(batched(pack(take_tokens(self.chunks(), self.val_tokens), self.seq_len), batch_size))

    def training_batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The endless stream of ``[batch_size, seq_len]`` training batches from batch ``start`` on."""
        blocks = itertools.chain.from_iterable(self._epoch(seed, epoch) for epoch in itertools.count())
        return itertools.islice(batched(blocks, batch_size), start, None)

    def _epoch(self, seed: int, epoch: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([seed, epoch])
        offset = int(rng.integers(self.seq_len)) if epoch else 0
        blocks = pack(skip_tokens(self.chunks(), self.val_tokens + offset), self.seq_len)
        return shuffled(blocks, self.shuffle_buffer, rng)
