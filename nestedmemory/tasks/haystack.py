"""Byte-level background text for the long-context suites (NIAH, BABILong): the embedded Shakespeare corpus or
RULER's noise sentences, cut to an exact number of bytes, with the sentence boundaries where text may be inserted.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from ..data import shakespeare
from .common import encode_bytes

#: RULER's noise haystack (S-NIAH-1), repeated.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
#: characters of the corpus used as essay background (≈ 300 KB: enough distinct text for 16K-byte examples).
CORPUS_CHARS = 300_000
_BOUNDARY = re.compile(rb"[.!?] +|\n")  # after a sentence end or a line end (verse)


def _with_starts(text: str) -> tuple[np.ndarray, np.ndarray]:
    data = text.encode("utf-8")
    return encode_bytes(text), np.array([m.end() for m in _BOUNDARY.finditer(data)], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def essay() -> tuple[np.ndarray, np.ndarray]:
    """The corpus as bytes and its sentence / line starts."""
    return _with_starts(shakespeare(CORPUS_CHARS))


def noise(min_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """RULER's noise sentences repeated to at least ``min_bytes`` bytes, and their sentence starts."""
    return _with_starts(NOISE * (min_bytes // len(NOISE) + 1))


def cut(rng: np.random.Generator, kind: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``length`` bytes of background (``kind`` ``essay``: from a random offset of the corpus; ``noise``: from the
    start of the noise text) and the offsets in it where a sentence may go (sentence and line starts, 0 and
    ``length``)."""
    source, starts = essay() if kind == "essay" else noise(length)
    if length >= len(source):
        raise ValueError(f"seq_len is too long: the background corpus holds {len(source)} bytes")
    start = int(rng.integers(len(source) - length)) if kind == "essay" else 0
    inside = starts[(starts > start) & (starts < start + length)] - start
    return source[start:start + length], np.concatenate([[0], inside, [length]])


def insert(background: np.ndarray, offsets, pieces) -> np.ndarray:
    """``background`` with each of ``pieces`` (byte arrays) inserted at its offset (non-decreasing offsets)."""
    parts, previous = [], 0
    for offset, piece in zip(offsets, pieces):
        parts += [background[previous:offset], piece]
        previous = offset
    return np.concatenate(parts + [background[previous:]])
