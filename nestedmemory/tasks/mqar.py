"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): an in-repo generator following
``zoology/data/multiquery_ar.py``, not the official data files.

An example holds ``num_kv_pairs`` key–value pairs ``k1 v1 k2 v2 …`` (distinct keys from ``[1, V/2)``, distinct
values from ``[V/2, V)``), then a query region where every key appears once, at an even offset ``2·gap`` with the
gaps drawn without replacement from the power law ``p(i) ∝ a·i^(a−1)`` (``power_a``; small ``a`` favours short
gaps). The label of the position after a query is the key's value (the model predicts it from the query key); the
token there is a filler. Fillers (token 0) become uniform random tokens when ``random_non_queries``. Metric:
accuracy over the queries.
"""

from __future__ import annotations

import numpy as np

from .common import IGNORE, batch, check_int, evaluate_data, rng_for


def generate(n: int, *, seed: int, vocab_size: int = 8192, seq_len: int = 64, num_kv_pairs: int = 4,
             power_a: float = 0.01, random_non_queries: bool = True) -> dict:
    """``n`` MQAR examples of ``seq_len`` tokens (Zoology's defaults; its CPU-sized configs are V 64–512,
    L 64–256, 4–16 pairs). Metadata: ``query_distance`` (``[n, num_kv_pairs]``, tokens from a pair's value to
    its query, in pair order)."""
    n, vocab_size, seq_len = check_int("n", n), check_int("vocab_size", vocab_size, 4), check_int("seq_len", seq_len)
    num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs)
    if not (isinstance(power_a, (int, float)) and 0 < power_a <= 1):
        raise ValueError(f"power_a must be in (0, 1], got {power_a!r}")
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2  # query slots
    if space < num_kv_pairs:
        raise ValueError(f"seq_len={seq_len} is too short for num_kv_pairs={num_kv_pairs}: it needs >= "
                         f"{4 * num_kv_pairs}")
    half = vocab_size // 2
    if half - 1 < num_kv_pairs or vocab_size - half < num_kv_pairs:
        raise ValueError(f"vocab_size={vocab_size} is too small for num_kv_pairs={num_kv_pairs} distinct keys and "
                         f"values (it needs >= {2 * num_kv_pairs + 2})")
    rng = rng_for(seed)
    rows = np.arange(n)[:, None]
    keys = 1 + _without_replacement(rng, np.ones(half - 1), n, num_kv_pairs)
    values = half + _without_replacement(rng, np.ones(vocab_size - half), n, num_kv_pairs)
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gaps = _without_replacement(rng, p / p.sum(), n, num_kv_pairs)

    input_ids = np.zeros((n, seq_len), dtype=np.int64)
    input_ids[:, 0:context:2], input_ids[:, 1:context:2] = keys, values
    query = context + 2 * gaps
    input_ids[rows, query] = keys
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    labels[rows, query + 1] = values
    if random_non_queries:
        fillers = input_ids == 0
        input_ids[fillers] = rng.integers(0, vocab_size, size=int(fillers.sum()))
    return batch(input_ids, labels, vocab_size, query_distance=query - (2 * np.arange(num_kv_pairs) + 1))


def evaluate(model, *, n: int, seed: int, batch_size: int, **options) -> dict:
    """Query accuracy of ``model`` on ``n`` examples of :func:`generate` (``options``; ``vocab_size`` defaults to the
    model's)."""
    data = generate(n, seed=seed, **{"vocab_size": model.config.vocab_size, **options})
    return evaluate_data(model, data, batch_size=batch_size, exact=False)


def _without_replacement(rng: np.random.Generator, p: np.ndarray, n: int, k: int) -> np.ndarray:
    """``[n, k]`` indices, each row ``k`` draws without replacement with probabilities ``p`` (the Gumbel top-k
    trick: the same law as drawing one at a time and renormalising)."""
    scores = np.log(p) - np.log(-np.log(rng.random((n, len(p)))))
    return np.argsort(-scores, axis=1)[:, :k]
