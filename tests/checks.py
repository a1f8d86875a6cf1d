"""Checks shared by several test files (imported as ``checks``: pytest puts ``tests/`` on the path)."""

import torch

from nestedmemory.models.modeling import cache_of


def assert_causal(layer, x, at):
    """Replacing the inputs from position ``at`` on leaves the outputs before ``at`` bit-identical and changes later
    ones."""
    y = x.clone()
    y[:, at:] = torch.randn_like(y[:, at:])
    a, b = layer(x)[0], layer(y)[0]
    assert torch.equal(a[:, :at], b[:, :at]) and not torch.allclose(a[:, at:], b[:, at:])


def decode(model, x, schedule):
    """Logits of ``x`` fed in pieces of ``schedule`` through the cache (which counts every token), and the final
    cache."""
    cache, logits, seen = None, [], 0
    for n in schedule:
        out = model(x[:, seen:seen + n], cache=cache, use_cache=True)
        cache, seen = cache_of(out), seen + n
        logits.append(out.logits)
        assert cache.seen_tokens == seen
    return torch.cat(logits, 1), cache
