"""What every suite shares: argument checks, seeds, byte tokenisation, batching, and the scoring of a causal LM.

Convention (Hugging Face): ``labels[:, t]`` is the target the model predicts from position ``t − 1``; ``-100`` marks
positions that are not scored. A prediction is the argmax of the logits, all positions of a batch in one forward
pass; a multi-token answer is teacher-forced (its earlier tokens are in the input) and counts as right only when
every one of its tokens is.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = -100


# ---------------------------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------------------------

def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value, *, high_open: bool = False) -> float:
    """``value`` as a float in [0, 1] ([0, 1) with ``high_open``), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
            0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1{')' if high_open else ']'}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def rng_for(seed) -> np.random.Generator:
    """The numpy generator of a non-negative integer ``seed`` (every generator is deterministic given its seed)."""
    return np.random.default_rng(check_int("seed", seed, 0))


def step_seed(seed: int, step: int) -> int:
    """A fresh data seed for training step ``step`` of a run seeded ``seed`` (independent streams per step)."""
    return int(np.random.SeedSequence((check_int("seed", seed, 0), step)).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------------------
# tokens and batches
# ---------------------------------------------------------------------------------------------------------------

def encode_bytes(text: str) -> np.ndarray:
    """Byte-level tokens (vocabulary 256) of ``text``: its UTF-8 bytes."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode_bytes(tokens) -> str:
    """The text of byte-level tokens (invalid UTF-8 shown as U+FFFD)."""
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def batch(input_ids: np.ndarray, labels: np.ndarray, vocab_size: int, **metadata) -> dict:
    """The generator output: ``input_ids`` / ``labels`` as LongTensors ``[n, T]`` plus per-example ``metadata``
    tensors. Checks the shared invariants: equal shapes, tokens inside the vocabulary, nothing scored at t = 0."""
    input_ids, labels = np.asarray(input_ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    assert input_ids.shape == labels.shape and input_ids.ndim == 2, (input_ids.shape, labels.shape)
    assert (labels[:, 0] == IGNORE).all(), "position 0 has no previous position to predict it"
    scored = labels[labels != IGNORE]
    top = max(int(input_ids.max(initial=0)), int(scored.max(initial=0)))
    if top >= vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is too small for this task: it needs at least {top + 1} tokens")
    out = dict(input_ids=torch.from_numpy(input_ids), labels=torch.from_numpy(labels))
    out.update({key: torch.as_tensor(np.asarray(value)) for key, value in metadata.items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------

def model_device(model) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def score(model, data: dict, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the number of scored positions predicted right, and the number of scored positions.

    One forward pass per batch of ``batch_size`` examples; position ``t``'s prediction is ``argmax logits[t − 1]``.
    """
    batch_size = check_int("batch_size", batch_size)
    needed = int(max(data["input_ids"].max(), data["labels"].max())) + 1
    if needed > model.config.vocab_size:
        raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the task's ({needed})")
    device, was_training = model_device(model), model.training
    model.eval()
    hits, totals = [], []
    try:
        for start in range(0, len(data["input_ids"]), batch_size):
            input_ids = data["input_ids"][start:start + batch_size].to(device)
            target = data["labels"][start:start + batch_size, 1:].to(device)
            prediction = model(input_ids=input_ids).logits[:, :-1].argmax(-1)
            scored = target != IGNORE
            hits.append(((prediction == target) & scored).sum(1).cpu())
            totals.append(scored.sum(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(hits), torch.cat(totals)


def _key(value) -> str:
    value = value.item() if isinstance(value, torch.Tensor) else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def summarize(hits: torch.Tensor, totals: torch.Tensor, *, exact: bool, groups: dict | None = None) -> dict:
    """Accuracy over all examples and per value of each metadata tensor in ``groups``.

    ``exact``: an example counts as right only if all its scored positions are (its answer is one multi-token
    string); also reports ``token_accuracy``. Otherwise the accuracy is over scored positions (each a query)."""

    def accuracy(selected) -> float:
        if exact:
            return float((hits[selected] == totals[selected]).float().mean())
        return float(hits[selected].sum() / totals[selected].sum().clamp(min=1))

    everything = torch.ones_like(hits, dtype=torch.bool)
    out = {"accuracy": accuracy(everything)}
    if exact:
        out["token_accuracy"] = float(hits.sum() / totals.sum().clamp(min=1))
    for name, values in (groups or {}).items():
        out[name] = {_key(v): accuracy(values == v) for v in torch.unique(values)}
    return out


def evaluate_data(model, data: dict, *, batch_size: int, exact: bool, groups: tuple = ()) -> dict:
    """:func:`score` then :func:`summarize`, grouped by the metadata keys ``groups`` of ``data``."""
    hits, totals = score(model, data, batch_size=batch_size)
    return summarize(hits, totals, exact=exact, groups={name: data[name] for name in groups})
