"""Attention token mixers: causality, prefill + decoding, left padding, a naive reference, argument checks."""

import math

import pytest
import torch

from nestedmemory.cli import relative_error
from nestedmemory.layers import LayerStates
from nestedmemory.layers.attention import Attention

DIM, HEADS, T = 16, 4, 12
VARIANTS = {
    "global": {},
    "swa3": dict(window=3),
    "swa5": dict(window=5),
    "persistent": dict(persistent_tokens=2),
    "swa3-persistent": dict(window=3, persistent_tokens=2),
    "gqa": dict(num_kv_heads=2),
    "gqa-swa5-persistent-hd6": dict(num_kv_heads=1, head_dim=6, window=5, persistent_tokens=2),
}
variants = pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())


def make(kw, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    layer = Attention(DIM, HEADS, **kw)
    if layer.persistent_tokens:
        with torch.no_grad():  # persistent tokens large enough to matter
            layer.persistent_k.normal_()
            layer.persistent_v.normal_()
    return layer.to(dtype)


def inputs(b, t, dtype=torch.float32, seed=1):
    return torch.randn(b, t, DIM, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@variants
def test_causality(kw):
    layer, x, t = make(kw), inputs(2, T), 6
    x2 = x.clone()
    x2[:, t + 1:] = inputs(2, T - t - 1, seed=2)
    torch.testing.assert_close(layer(x)[0][:, :t + 1], layer(x2)[0][:, :t + 1], rtol=0, atol=1e-6)


@variants
@pytest.mark.parametrize("schedule", [[1] * T, [7] + [1] * 5, [4, 3, 1, 1, 2, 1]], ids=["tokens", "prefill7", "mixed"])
def test_prefill_then_decode_equals_full_forward(kw, schedule):
    layer, x = make(kw), inputs(2, T)
    full, cache, outs, seen = layer(x)[0], None, [], 0
    for n in schedule:
        out, _, cache = layer(x[:, seen:seen + n], past_key_values=cache, use_cache=True)
        outs.append(out)
        seen += n
        kept = cache[0]["k"].shape[1]
        assert kept == (seen if "window" not in kw else min(kw["window"] - 1, seen))
        assert cache[0]["v"].shape[1] == cache[0]["valid"].shape[1] == kept
        assert cache[0]["position"].tolist() == [seen, seen]
    assert isinstance(cache, LayerStates) and cache.seen_tokens == 0  # the model counts tokens, not the layer
    assert relative_error(full, torch.cat(outs, 1)) < 1e-5


@variants
def test_left_padding_matches_unpadded(kw):
    """Rows of lengths 12, 8, 5, 0, left-padded: real positions equal each sequence run alone (full forward and
    prefill of 8 columns + 4 decoding steps); padding positions output zeros, never NaN."""
    layer, lengths = make(kw), [T, 8, 5, 0]
    x = inputs(len(lengths), T)
    mask = torch.stack([torch.arange(T) >= T - n for n in lengths]).long()
    full = layer(x, attention_mask=mask)[0]
    out, _, cache = layer(x[:, :8], attention_mask=mask[:, :8], use_cache=True)
    steps = [out]
    for c in range(8, T):
        out, _, cache = layer(x[:, c:c + 1], attention_mask=mask[:, :c + 1], past_key_values=cache, use_cache=True)
        steps.append(out)
    decoded = torch.cat(steps, 1)
    for row, n in enumerate(lengths):
        if n:
            alone = layer(x[row:row + 1, T - n:])[0][0]
            assert relative_error(alone, full[row, T - n:]) < 1e-5
            assert relative_error(alone, decoded[row, T - n:]) < 1e-5
        assert torch.equal(full[row, :T - n], torch.zeros_like(full[row, :T - n]))
        assert torch.equal(decoded[row, :T - n], torch.zeros_like(decoded[row, :T - n]))
    assert cache[0]["position"].tolist() == lengths


def rope_reference(x, pos, theta=10000.0):
    """RoPE as a complex rotation of the pairs (i, i + D/2)."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(freq), pos * freq)
    return torch.cat((z.real, z.imag), -1)


@pytest.mark.parametrize("window", [None, 3, 5])
@pytest.mark.parametrize("persistent", [0, 2])
def test_matches_naive_reference(window, persistent):
    kw = dict(window=window, persistent_tokens=persistent, num_kv_heads=2)
    layer, x = make(kw, torch.float64), inputs(2, 10, torch.float64)
    d, group = layer.head_dim, HEADS // 2
    q, k, v = (p(x).view(2, 10, -1, d) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    none = torch.zeros(0, 2, d, dtype=torch.float64)  # a layer without persistent tokens holds no parameters
    p_k, p_v = (layer.persistent_k, layer.persistent_v) if persistent else (none, none)
    out = torch.zeros(2, 10, HEADS, d, dtype=torch.float64)
    for b in range(2):
        for t in range(10):
            first = 0 if window is None else max(0, t - window + 1)
            for h in range(HEADS):
                qt = rope_reference(q[b, t, h], t)
                keys = torch.cat([p_k[:, h // group]]
                                 + [rope_reference(k[b, j, h // group], j)[None] for j in range(first, t + 1)])
                vals = torch.cat((p_v[:, h // group], v[b, first:t + 1, h // group]))
                out[b, t, h] = torch.softmax(keys @ qt / math.sqrt(d), 0) @ vals
    reference = layer.o_proj(out.reshape(2, 10, -1))
    assert relative_error(reference, layer(x)[0]) < 1e-6


def test_low_precision_padded_is_finite():
    layer = make(dict(window=3, persistent_tokens=2), torch.bfloat16)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0] * 6])
    out = layer(inputs(2, 6, torch.bfloat16), attention_mask=mask)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("kw, field", [
    (dict(window=0), "window"),
    (dict(num_heads=3), "num_heads"),
    (dict(num_heads=5), "num_heads"),
    (dict(num_kv_heads=3), "num_kv_heads"),
    (dict(head_dim=5), "head_dim"),
    (dict(persistent_tokens=-1), "persistent_tokens"),
])
def test_bad_construction(kw, field):
    kw = {"dim": DIM, "num_heads": HEADS, **kw}
    with pytest.raises(ValueError, match=field):
        Attention(**kw)
