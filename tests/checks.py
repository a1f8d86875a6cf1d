"""Checks shared by several test files (imported as ``checks``: pytest puts ``tests/`` on the path)."""

import dataclasses

import torch

from nestedmemory.models.modeling import cache_of
from nestedmemory.train import DataConfig, ModelConfig, SampleConfig, TrainConfig


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


def tiny_run(out, **changes) -> TrainConfig:
    """A training run of a few seconds: the tiny default preset, 6 steps of 4 × 32 tokens, a checkpoint every 3."""
    config = TrainConfig(model=ModelConfig(size="tiny"), data=DataConfig(seq_len=32, val_tokens=512, shuffle_buffer=16),
                         sample=SampleConfig(max_new_tokens=4), out=out and str(out), max_steps=6, batch_size=4,
                         log_every=1, eval_every=0, save_every=3, keep_checkpoints=3, progress=False)
    return dataclasses.replace(config, **changes)
