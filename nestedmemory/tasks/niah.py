"""Single needle-in-a-haystack, RULER S-NIAH style (Hsieh et al. 2024; Titans' S-NIAH-PK / -N / -W): an in-repo
generator after ``RULER/scripts/data/synthetic/niah.py``, byte-level (vocabulary 256), not RULER's data.

Variants (:data:`VARIANTS`): ``passkey`` (S-NIAH-1: the noise haystack "The grass is green. …" repeated, a 7-digit
number), ``number`` (S-NIAH-2: an essay haystack, a 7-digit number), ``uuid`` (S-NIAH-3: an essay haystack, a UUID).
The needle is RULER's sentence "One of the special magic {numbers|uuids} for {key} is: {value}." with an
adjective-noun key; it goes in at the sentence boundary nearest the requested depth (0 = start, 1 = end of the
haystack). The example ends with the answer prefix "The special magic {number|uuid} for {key} is: " and the value;
every byte of the value is scored (exact match under teacher forcing).

Deviations from RULER (so numbers are not comparable to RULER's): the essay haystack is the embedded Shakespeare
corpus (RULER downloads Paul Graham essays), cut at bytes, with regex sentence boundaries (no nltk); keys come from
a small embedded word list (RULER: wonderwords); the prompt keeps only the needle sentence and the answer prefix
(RULER's instructions and question are left out: a tiny model is trained on this generator, it follows no prompt);
the haystack fills the example to exactly ``seq_len`` bytes (RULER binary-searches a token budget).
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from . import haystack
from .common import IGNORE, batch, check_choice, check_fraction, check_int, encode_bytes, rng_for, score, summarize

#: variant → (haystack, value kind).
VARIANTS = {"passkey": ("noise", "number"), "number": ("essay", "number"), "uuid": ("essay", "uuid")}
NEEDLE = "One of the special magic {kind}s for {key} is: {value}. "
ANSWER_PREFIX = "\nThe special magic {kind} for {key} is: "
ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "curious", "eager", "fierce", "gentle", "golden",
              "hollow", "humble", "jolly", "lively", "lucky", "mellow", "quiet", "rapid", "silent", "silver",
              "steady", "swift", "tender", "wild")
NOUNS = ("anchor", "badger", "candle", "cellar", "comet", "falcon", "garden", "harbor", "island", "lantern",
         "meadow", "mirror", "orchard", "otter", "pebble", "raven", "river", "saddle", "shadow", "thistle",
         "tower", "valley", "willow", "window")
#: the depth grid of :func:`evaluate` (RULER uses 40 evenly spaced depths).
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _value(rng: np.random.Generator, kind: str) -> str:
    if kind == "number":
        return str(int(rng.integers(1_000_000, 10_000_000)))
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def generate(n: int, *, seed: int, vocab_size: int = 256, seq_len: int = 1024, variant: str = "passkey",
             depths=None) -> dict:
    """``n`` examples of ``seq_len`` bytes. ``depths``: needle depths in [0, 1] given to the examples in turn
    (``None``: uniform random depths, for training). Metadata: ``depth`` (requested), ``needle_position`` (byte
    offset of the needle) and ``haystack_length`` (bytes of haystack around it)."""
    n, seq_len = check_int("n", n), check_int("seq_len", seq_len)
    if check_int("vocab_size", vocab_size) < 256:
        raise ValueError(f"vocab_size must be >= 256 for byte-level tokens, got {vocab_size}")
    haystack_kind, kind = VARIANTS[check_choice("variant", variant, VARIANTS)]
    if depths is not None:
        depths = [check_fraction("depths", d) for d in depths]
        if not depths:
            raise ValueError("depths must be None or a non-empty sequence of numbers in [0, 1]")
    rng = rng_for(seed)
    input_ids = np.empty((n, seq_len), dtype=np.int64)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    depth_of, needle_at, hay_lengths = np.empty(n), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for i in range(n):
        key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        value = _value(rng, kind)
        needle = encode_bytes(NEEDLE.format(kind=kind, key=key, value=value))
        tail = encode_bytes(ANSWER_PREFIX.format(kind=kind, key=key) + value)
        hay_length = seq_len - len(needle) - len(tail)
        if hay_length < 0:
            raise ValueError(f"seq_len={seq_len} is too short: the needle and the answer alone take "
                             f"{len(needle) + len(tail)} bytes")
        depth = float(rng.random()) if depths is None else depths[i % len(depths)]
        hay, offsets = haystack.cut(rng, haystack_kind, hay_length)
        at = int(offsets[np.argmin(np.abs(offsets - depth * hay_length))])
        input_ids[i] = np.concatenate([haystack.insert(hay, [at], [needle]), tail])
        labels[i, seq_len - len(value):] = input_ids[i, seq_len - len(value):]
        depth_of[i], needle_at[i], hay_lengths[i] = depth, at, hay_length
    return batch(input_ids, labels, vocab_size, depth=depth_of, needle_position=needle_at,
                 haystack_length=hay_lengths)


def evaluate(model, *, n: int, seed: int, batch_size: int, lengths=(256, 512, 1024), depths=DEPTHS,
             variant: str = "passkey") -> dict:
    """Exact-match accuracy of the value over ``n`` examples per length in ``lengths``, the depths in turn:
    overall, per ``length``, per ``depth``, and the ``grid`` of (depth, length) cells for the heatmap."""
    if not lengths:
        raise ValueError("lengths must be a non-empty sequence of sequence lengths")
    hits, totals, length_of, depth_of, grid = [], [], [], [], []
    for length in lengths:
        data = generate(n, seed=seed, seq_len=length, variant=variant, depths=depths)
        h, t = score(model, data, batch_size=batch_size)
        per_depth = summarize(h, t, exact=True, groups={"depth": data["depth"]})["depth"]
        grid += [dict(length=length, depth=float(d), accuracy=a) for d, a in per_depth.items()]
        hits.append(h), totals.append(t), depth_of.append(data["depth"])
        length_of.append(torch.full_like(h, length))
    out = summarize(torch.cat(hits), torch.cat(totals), exact=True,
                    groups={"length": torch.cat(length_of), "depth": torch.cat(depth_of)})
    return dict(out, grid=grid)
