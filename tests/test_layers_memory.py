"""The memory token mixer: causality, decoding, padding, gradients into every parameter, stability at init."""

import pytest
from checks import assert_causal
import torch

from nestedmemory.layers import LayerStates, MemoryMixer, NeuralMemory
from nestedmemory.memory import MemoryRule

DIM, HEADS, HEAD_DIM = 24, 2, 12
RULES = {
    "titans": dict(memory="mlp", objective="l2", retention="decay", learner="momentum"),
    "titans-linear": dict(memory="linear", objective="l2", retention="decay", learner="momentum"),
    "moneta": dict(memory="mlp", layernorm=True, objective="lp", retention="lq", learner="gd"),
    "yaad": dict(memory="mlp", layernorm=True, objective="huber", retention="decay", learner="gd"),
    "memora": dict(memory="mlp", layernorm=True, objective="l2", retention="kl", learner="gd"),
    "robust": dict(memory="linear", objective="robust", retention="elastic", learner="gd", shrink=1e-3),
    "omeganet": dict(memory="linear", feature_map="poly", objective="l2", retention="decay", learner="omega",
                     window=3),
    "atlas": dict(memory="mlp", feature_map="poly", objective="l2", retention="decay", learner="muon", window=2),
    "atlas++": dict(memory="mlp", gated=True, objective="l2", retention="decay", learner="muon"),
    "dla": dict(memory="mlp", objective="dot", retention="decay", learner="gd"),
    "gated-deltanet": dict(memory="linear", objective="dot", retention="decay", learner="dgd"),
    "hope-dgd": dict(memory="mlp", objective="l2", retention="decay", learner="dgd"),
}


def make(name, chunk_size=4, **kwargs):
    torch.manual_seed(0)
    rule = MemoryRule(**RULES[name], chunk_size=chunk_size)
    return MemoryMixer(DIM, HEADS, HEAD_DIM, rule=rule, **kwargs).double()


def inputs(batch=2, length=11, seed=1):
    return torch.randn(batch, length, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", RULES)
def test_causal(name):
    assert_causal(make(name), inputs(), 6)


@pytest.mark.parametrize("name", RULES)
def test_prefill_then_decoding_equals_the_full_pass(name):
    layer, x = make(name), inputs()
    full = layer(x)[0]
    out, _, cache = layer(x[:, :5], use_cache=True)
    pieces = [out]
    for t in range(5, x.shape[1]):
        out, _, cache = layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)
        pieces.append(out)
    assert isinstance(cache, LayerStates)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["titans", "memora", "omeganet"])
def test_left_padding_gives_the_unpadded_outputs(name):
    layer, x = make(name), inputs(length=10)
    mask = torch.ones(2, 10)
    mask[1, :4] = 0
    padded = x.clone()
    padded[1, :4] = 5.0                                  # garbage in the padding must not leak
    out = layer(padded, attention_mask=mask)[0]
    torch.testing.assert_close(out[0], layer(x[:1])[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1, 4:], layer(x[1:, 4:])[0][0], rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError, match="padded batches with a decoding cache"):
        layer(padded, attention_mask=mask, use_cache=True)


@pytest.mark.parametrize("name", ["titans", "moneta", "memora", "atlas", "hope-dgd", "gated-deltanet"])
def test_every_parameter_learns(name):
    """The LM-style loss reaches every parameter — projections, conv, gates, feature coefficients and the
    initial memory state — with a finite, nonzero gradient (writes are not stop-gradient)."""
    layer = make(name)
    layer(inputs())[0].square().mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_channel_wise_gates():
    rule = MemoryRule(**RULES["titans-linear"], chunk_size=4)
    layer = MemoryMixer(DIM, HEADS, HEAD_DIM, rule=rule, channel_gates=True, gate_rank=4).double()
    x = inputs()
    full = layer(x)[0]
    out, _, cache = layer(x[:, :7], use_cache=True)
    rest, _, _ = layer(x[:, 7:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(torch.cat([out, rest], 1), full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 16, 64])
def test_memory_keeps_a_usable_norm_over_4k_tokens_at_init(chunk_size):
    """At initialisation the Titans memory neither explodes nor vanishes over 4K tokens (gate defaults)."""
    torch.manual_seed(0)
    layer = NeuralMemory(64, 4, 16, chunk_size=chunk_size, depth=2, expansion=4)
    with torch.no_grad():
        out, _, cache = layer(torch.randn(1, 4096, 64), use_cache=True)
    assert torch.isfinite(out).all()
    for w0, w in zip(layer.initial, cache[0]["memory"].weights):
        ratio = (w.norm() / w0.norm()).item()
        assert 0.2 < ratio < 5, ratio


@pytest.mark.parametrize("kwargs,words", [
    (dict(dim=25, num_heads=2), "not divisible"),
    (dict(dim=24, num_heads=0, head_dim=4), "num_heads"),
    (dict(dim=24, num_heads=2, activation="relu"), "activation"),
    (dict(dim=24, num_heads=2, lr_init=2.0, lr_max=1.0), "gate init"),
])
def test_bad_construction_names_the_field(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MemoryMixer(rule=MemoryRule(), **kwargs)
