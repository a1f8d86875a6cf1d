"""From documents to fixed-length training sequences, streamed: tokenize, hold out a prefix, pack into blocks,
shuffle with a bounded buffer, batch. Each step is a plain iterator function; :mod:`.stream` composes them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

__all__ = ["batched", "pack", "shuffled", "skip_tokens", "take_tokens", "token_chunks"]


def token_chunks(documents: Iterable[Iterable[str]], tokenizer, separator: str = "\n\n") -> Iterator[np.ndarray]:
    """The token stream of ``documents`` as arrays, with ``separator`` (encoded once) after every document."""
    separator_ids = tokenizer.encode(separator) if separator else None
    for document in documents:
        for piece in document:
            yield tokenizer.encode(piece)
        if separator_ids is not None:
            yield separator_ids


def take_tokens(chunks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """The first ``n`` tokens of the stream."""
    for chunk in chunks:
        if n <= 0:
            return
        yield chunk[:n]
        n -= len(chunk)


def skip_tokens(chunks: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """The stream without its first ``n`` tokens."""
    for chunk in chunks:
        if n < len(chunk):
            yield chunk[max(n, 0):]
        n -= len(chunk)


def pack(chunks: Iterable[np.ndarray], length: int, drop_last: bool = True) -> Iterator[np.ndarray]:
    """Consecutive blocks of ``length`` tokens across chunk (and document) boundaries; the final shorter block is
    dropped unless ``drop_last`` is false."""
    if length < 1:
        raise ValueError(f"block length must be >= 1, got {length}")
    buffer = np.empty(0, dtype=np.int64)
    for chunk in chunks:
        buffer = np.concatenate([buffer, chunk]) if len(buffer) else chunk
        full = len(buffer) // length * length
        yield from buffer[:full].reshape(-1, length)
        buffer = buffer[full:]
    if len(buffer) and not drop_last:
        yield buffer


def shuffled(items: Iterable, buffer_size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle of a stream through a buffer of ``buffer_size`` items (1: no shuffling); deterministic given
    ``rng``."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    rng.shuffle(buffer)
    yield from buffer


def batched(blocks: Iterable[np.ndarray], batch_size: int, drop_last: bool = True) -> Iterator[torch.Tensor]:
    """``[batch_size, length]`` LongTensors of consecutive blocks; a block of another length (the last of
    ``pack(..., drop_last=False)``) starts a new batch. The final smaller batch is dropped if ``drop_last``."""
    batch = []
    for block in blocks:
        if batch and (len(batch) == batch_size or len(block) != len(batch[0])):
            if len(batch) == batch_size or not drop_last:
                yield torch.from_numpy(np.stack(batch))
            batch = []
        batch.append(block)
    if batch and (len(batch) == batch_size or not drop_last):
        yield torch.from_numpy(np.stack(batch))
