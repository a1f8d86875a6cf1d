"""The six MAD synthetic tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"): in-repo
generators following ``mad-lab``'s ``mad/data/instances.py`` and ``configs/tasks/*.yml``, not the official data.

Layout for a causal LM: MAD computes an answer at a *slot* (a value, a blank after the copy token, the INSERT token);
here the label sits at that slot, so the model predicts it from the token before. Metric: accuracy over the scored
tokens (MAD's). Tasks, with MAD's baseline settings as defaults (:data:`TASKS`):

- ``in_context_recall``: a stream of key–value pairs (keys from the first half of the non-special vocabulary,
  values from the second half, a fixed map within the example); ``multi_query``: every value of a key seen before
  is scored; otherwise one probe ``COPY k v`` at the end. The last pair always repeats a key seen before.
- ``noisy_in_context_recall``: the same with a fraction ``frac_noise`` of the pairs replaced by two tokens of a
  separate ``noise_vocab_size``-token noise vocabulary.
- ``fuzzy_in_context_recall``: keys and values are motifs of 1…``k_motif_size`` / 1…``v_motif_size`` distinct
  tokens; test examples use the largest key size only; examples are left-padded; every value token is scored.
- ``selective_copying``: ``num_tokens_to_copy`` tokens scattered (at uniformly drawn positions) among blanks, then
  ``COPY`` and blanks; the tokens are scored in order at the blanks after ``COPY``.
- ``compression``: MAD trains an encoder and an MLP decoder that rebuilds the whole sequence from the encoder's
  output at the final compression token alone. A causal LM has no separate decoder, so here the model itself must
  rebuild ``x_1 … x_m`` after the compression token ``C``, emitting them in order at blanks:
  ``x_1 … x_m C _ … _``. For models with a fixed-size state (the recurrent memories) everything still has to pass
  through the state at ``C``, as in MAD; softmax attention can look back at the tokens, so for it the task is no
  bottleneck and reduces to copying. Numbers are therefore not comparable to MAD's compression scores. ``seq_len``
  holds ``2m + 1`` tokens (the default 63 is MAD's 32-token baseline: 31 tokens and ``C``).
- ``memorization``: a fixed key→value map (drawn with ``kv_map_seed`` = 12345, MAD's) that must be stored in the
  weights: ``k INSERT k INSERT …``, the value scored at each ``INSERT``.

``training=True`` gives MAD's training instances: the recall tasks score every next token (MAD trains them as
language models) and fuzzy keys take every motif size.
"""

from __future__ import annotations

import functools

import numpy as np

from .common import IGNORE, batch, check_choice, check_fraction, check_int, evaluate_data, rng_for

#: task → MAD's baseline settings (``configs/tasks/*.yml``; compression as explained above).
TASKS = {
    "in_context_recall": dict(vocab_size=16, seq_len=128),
    "fuzzy_in_context_recall": dict(vocab_size=16, seq_len=128),
    "noisy_in_context_recall": dict(vocab_size=32, seq_len=128, noise_vocab_size=16, frac_noise=0.2),
    "selective_copying": dict(vocab_size=16, seq_len=256, num_tokens_to_copy=16),
    "compression": dict(vocab_size=16, seq_len=63),
    "memorization": dict(vocab_size=256, seq_len=32),
}


def generate(n: int, *, seed: int, task: str, vocab_size: int | None = None, seq_len: int | None = None,
             training: bool = False, **options) -> dict:
    """``n`` examples of MAD task ``task`` (``vocab_size`` / ``seq_len`` default to its baseline). ``options``:
    ``multi_query`` (recall tasks, default True), ``noise_vocab_size`` / ``frac_noise`` (noisy recall),
    ``k_motif_size`` / ``v_motif_size`` (fuzzy recall, default 3), ``num_tokens_to_copy`` (selective copying),
    ``kv_map_seed`` (memorization)."""
    settings = dict(TASKS[check_choice("task", task, TASKS)], **options)
    baseline_vocab, baseline_len = settings.pop("vocab_size"), settings.pop("seq_len")
    vocab_size = check_int("vocab_size", baseline_vocab if vocab_size is None else vocab_size, 4)
    seq_len = check_int("seq_len", baseline_len if seq_len is None else seq_len, 2)
    input_ids, labels = _GENERATORS[task](rng_for(seed), check_int("n", n), vocab_size, seq_len,
                                          training=bool(training), **settings)
    return batch(input_ids, labels, vocab_size)


def evaluate(model, *, n: int, seed: int, batch_size: int, task: str | None = None, **options) -> dict:
    """Token accuracy of ``model`` on ``n`` test examples of ``task`` (``options`` as in :func:`generate`;
    ``vocab_size`` defaults to the task's baseline, which the model's vocabulary must cover). With no ``task``
    (the suite as a whole, as ``nestedmemory eval --suite mad`` runs it): ``n`` examples of each of the six tasks,
    their mean ``accuracy`` and the accuracy per ``task``."""
    if task is None:
        per_task = {name: evaluate(model, n=n, seed=seed, batch_size=batch_size, task=name, **options)["accuracy"]
                    for name in TASKS}
        return {"accuracy": float(np.mean(list(per_task.values()))), "task": per_task}
    data = generate(n, seed=seed, task=task, training=False, **options)
    return evaluate_data(model, data, batch_size=batch_size, exact=False)


# ---------------------------------------------------------------------------------------------------------------
# recall tasks
# ---------------------------------------------------------------------------------------------------------------

def _recall_vocab(vocab_size: int, multi_query: bool, noise_vocab_size: int, specials: int = 0):
    """(keys, values, noise, copy token): MAD's split of the vocabulary (special tokens at the top)."""
    size = vocab_size - specials - (0 if multi_query else 1) - noise_vocab_size
    if size // 2 < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no keys and values after the special and noise tokens")
    return np.arange(size // 2), np.arange(size // 2, size), np.arange(size, size + noise_vocab_size), vocab_size - 1


def _lm_targets(input_ids: np.ndarray, pad: int | None = None) -> np.ndarray:
    """MAD's training targets for the recall tasks: every next token (padding excepted)."""
    labels = input_ids.copy()
    if pad is not None:
        labels[input_ids == pad] = IGNORE
    labels[:, 0] = IGNORE
    return labels


def _left_pad(rows: list, length: int, pad: int) -> np.ndarray:
    """Rows of different lengths left-padded with ``pad`` to ``length`` (``[len(rows), length]``)."""
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"seq_len={length} is too short: an example needs {len(row)} tokens")
        out[i, length - len(row):] = row
    return out


def _in_context_recall(rng, n, vocab_size, seq_len, *, training, multi_query=True, noise_vocab_size=0,
                       frac_noise=0.0):
    frac_noise = check_fraction("frac_noise", frac_noise, high_open=True)
    noise_vocab_size = check_int("noise_vocab_size", noise_vocab_size, 1 if frac_noise > 0 else 0)
    keys, values, noise, copy = _recall_vocab(vocab_size, multi_query, noise_vocab_size)
    extra = 0 if multi_query else 1
    if seq_len % 2 != extra or seq_len < 4 + extra:
        raise ValueError(f"seq_len must be {'even' if multi_query else 'odd'} and >= {4 + extra} for "
                         f"{'multi' if multi_query else 'single'}-query recall, got {seq_len}")
    pairs = (seq_len - extra) // 2 - 1  # the stream before the final probe pair
    input_ids = np.empty((n, seq_len), dtype=np.int64)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    for i in range(n):
        tokens, targets, kv_map = [], [], {}
        keep = rng.integers(pairs)  # at least one pair is not noise
        for j in range(pairs):
            if frac_noise > 0 and j != keep and rng.random() < frac_noise:
                tokens += list(rng.choice(noise, 2))
                targets += [IGNORE, IGNORE]
                continue
            k = int(rng.choice(keys))
            seen = k in kv_map
            v = kv_map.setdefault(k, int(rng.choice(values)))
            tokens += [k, v]
            targets += [IGNORE, v if seen and multi_query else IGNORE]
        probe = int(rng.choice(list(kv_map)))
        tokens += ([] if multi_query else [copy]) + [probe, kv_map[probe]]
        targets += [IGNORE] * (extra + 1) + [kv_map[probe]]
        input_ids[i], labels[i] = tokens, targets
    return input_ids, _lm_targets(input_ids) if training else labels


def _noisy_in_context_recall(rng, n, vocab_size, seq_len, *, training, noise_vocab_size=16, frac_noise=0.2,
                             multi_query=True):
    if check_fraction("frac_noise", frac_noise, high_open=True) == 0:
        raise ValueError("frac_noise must be > 0 for noisy in-context recall, got 0")
    return _in_context_recall(rng, n, vocab_size, seq_len, training=training, multi_query=multi_query,
                              noise_vocab_size=noise_vocab_size, frac_noise=frac_noise)


def _fuzzy_in_context_recall(rng, n, vocab_size, seq_len, *, training, multi_query=True, k_motif_size=3,
                             v_motif_size=3):
    k_max, v_max = check_int("k_motif_size", k_motif_size), check_int("v_motif_size", v_motif_size)
    keys, values, _, copy = _recall_vocab(vocab_size, multi_query, 0, specials=1)
    if len(keys) < k_max or len(values) < v_max:
        raise ValueError(f"vocab_size={vocab_size} is too small for motifs of {k_max} key / {v_max} value tokens")
    pad = vocab_size - 1 if multi_query else vocab_size - 2  # below the copy token
    extra = 0 if multi_query else 1
    key_sizes = range(1, k_max + 1) if training else [k_max]

    def motif(vocab, sizes) -> tuple:
        return tuple(int(t) for t in rng.choice(vocab, int(rng.choice(sizes)), replace=False))

    rows, row_targets = [], []
    for _ in range(n):
        k_probe, v_probe = motif(keys, key_sizes), motif(values, range(1, v_max + 1))
        probe_size = len(k_probe) + len(v_probe)
        budget = seq_len - extra - probe_size - (k_max + v_max)  # the stream stops before this length
        if budget <= 2 * probe_size:
            raise ValueError(f"seq_len={seq_len} is too short for fuzzy recall with motifs up to "
                             f"{k_max}+{v_max} tokens")
        probe_at, probe_added = rng.integers(budget - probe_size), False
        tokens, targets, kv_map = [], [], {}
        while len(tokens) < budget:
            if len(tokens) >= probe_at and not probe_added:
                k = k_probe
            else:
                k = motif(keys, key_sizes)
            if k == k_probe:
                v, probe_added = v_probe, True
            else:
                v = kv_map[k] if k in kv_map else motif(values, range(1, v_max + 1))
            seen = k in kv_map
            kv_map[k] = v
            tokens += k + v
            targets += [IGNORE] * len(k) + (list(v) if seen and multi_query else [IGNORE] * len(v))
        tokens += ([] if multi_query else [copy]) + list(k_probe + v_probe)
        targets += [IGNORE] * (extra + len(k_probe)) + list(v_probe)
        rows.append(tokens)
        row_targets.append(targets)
    input_ids = _left_pad(rows, seq_len, pad)
    return input_ids, _lm_targets(input_ids, pad) if training else _left_pad(row_targets, seq_len, IGNORE)


# ---------------------------------------------------------------------------------------------------------------
# copying, compression, memorization
# ---------------------------------------------------------------------------------------------------------------

def _selective_copying(rng, n, vocab_size, seq_len, *, training, num_tokens_to_copy=16):
    count = check_int("num_tokens_to_copy", num_tokens_to_copy)
    copy, blank = vocab_size - 1, vocab_size - 2
    if seq_len < 2 * count + 1:
        raise ValueError(f"seq_len={seq_len} must be >= 2 * num_tokens_to_copy + 1 = {2 * count + 1}")
    region = seq_len - count - 1  # the tokens to copy and the blanks among them
    tokens = rng.integers(0, vocab_size - 2, size=(n, count))
    where = np.sort(np.argsort(rng.random((n, region)), axis=1)[:, :count], axis=1)
    input_ids = np.full((n, seq_len), blank, dtype=np.int64)
    np.put_along_axis(input_ids, where, tokens, axis=1)
    input_ids[:, region] = copy
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    labels[:, region + 1:] = tokens
    return input_ids, labels


def _compression(rng, n, vocab_size, seq_len, *, training):
    compress, blank = vocab_size - 1, vocab_size - 2
    m = (seq_len - 1) // 2
    if m < 1:
        raise ValueError(f"seq_len must be >= 3 for compression, got {seq_len}")
    tokens = rng.integers(0, vocab_size - 2, size=(n, m))
    input_ids = np.full((n, seq_len), blank, dtype=np.int64)
    input_ids[:, :m], input_ids[:, m] = tokens, compress
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    labels[:, m + 1:2 * m + 1] = tokens
    return input_ids, labels


@functools.lru_cache(maxsize=8)
def kv_map(vocab_size: int, seed: int = 12345) -> np.ndarray:
    """Memorization's fixed map over ``vocab_size`` non-special tokens: ``kv_map(V)[k]`` is key ``k``'s value
    (keys ``[0, V/2)``, values ``[V/2, V)``, both shuffled by a generator seeded ``seed``, then paired)."""
    rng = np.random.default_rng(seed)
    keys = rng.permutation(vocab_size // 2)
    values = vocab_size // 2 + rng.permutation(vocab_size - vocab_size // 2)
    out = np.empty(vocab_size // 2, dtype=np.int64)
    out[keys] = values[:len(keys)]
    return out


def _memorization(rng, n, vocab_size, seq_len, *, training, kv_map_seed=12345):
    if seq_len % 2:
        raise ValueError(f"seq_len must be even for memorization (key, INSERT pairs), got {seq_len}")
    insert = vocab_size - 1
    table = kv_map(vocab_size - 1, check_int("kv_map_seed", kv_map_seed, 0))
    keys = rng.integers(0, len(table), size=(n, seq_len // 2))
    input_ids = np.full((n, seq_len), insert, dtype=np.int64)
    input_ids[:, 0::2] = keys
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    labels[:, 1::2] = table[keys]
    return input_ids, labels


_GENERATORS = {
    "in_context_recall": _in_context_recall,
    "fuzzy_in_context_recall": _fuzzy_in_context_recall,
    "noisy_in_context_recall": _noisy_in_context_recall,
    "selective_copying": _selective_copying,
    "compression": _compression,
    "memorization": _memorization,
}
