"""Titans' MAC, MAG and MAL in the paper's form (Titans Eq. 21-30, issue 12 item 4) and the earlier forms kept as
options: MAC's long-term memory read at the segment's own tokens, written out against a reference; the MAG / MAL
memory over ``[p] ∥ x``; causality, decoding == full pass across segment and chunk borders, padded batches and beam
search for every form (fp64); the config fields and the loading of configs saved before they existed."""

import json
import math

import checks
import pytest
import torch

from nestedmemory.cli import relative_error
from nestedmemory.layers import MemoryMixer
from nestedmemory.layers.attention import Attention
from nestedmemory.layers.rope import apply_rope
from nestedmemory.models import PRESETS, NestedMemoryConfig, NestedMemoryForCausalLM, from_preset, preset_config
from nestedmemory.models.blocks import PersistentMemory

T = 20
#: every form of the three blocks: the paper's (the presets' default) and the earlier one.
FORMS = {
    "mac-segment": ("titans-mac", {}),
    "mac-segment-6": ("titans-mac", dict(segment_size=6)),  # segments end inside memory chunks (of 8)
    "mac-learned": ("titans-mac", dict(mac_queries="learned")),
    "mag-persistent": ("titans-mag", {}),
    "mag-plain": ("titans-mag", dict(memory_persistent=False)),
    "mal-persistent": ("titans-mal", {}),
    "mal-plain": ("titans-mal", dict(memory_persistent=False)),
    "mal-persistent-3": ("titans-mal", dict(persistent_tokens=3)),  # p not a divisor of the chunk
}
forms = pytest.mark.parametrize("name, overrides", FORMS.values(), ids=FORMS.keys())
#: the presets built on MAG / MAL (Titans', Atlas'), and on MAC.
GATE_LAYER_PRESETS = [name for name, (architecture, _) in PRESETS.items() if architecture in ("mag", "mal")]
TITANS_BLOCK_PRESETS = [name for name, (architecture, _) in PRESETS.items() if architecture in ("mac", "mag", "mal")]


def make(name, **overrides):
    torch.manual_seed(0)
    return from_preset(name, **overrides).double().eval()


def tokens(b=2, t=T, seed=1):
    return torch.randint(1, 256, (b, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ every form: causal, decodes, pads, beams
@forms
@torch.no_grad()
def test_causal_at_every_position_of_a_segment(name, overrides):
    """Changing token ``t`` changes no logit before ``t`` (MAC: ``h_t``, read at ``S_t``, is hidden from the
    earlier tokens of its segment) and changes the logit at ``t``."""
    model, x = make(name, **overrides), tokens()
    full = model(x).logits
    for t in (3, 6, 9, 13):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 256
        changed = model(y).logits
        torch.testing.assert_close(changed[:, :t], full[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(changed[:, t], full[:, t])


@forms
@torch.no_grad()
def test_decoding_equals_the_full_pass(name, overrides):
    """Prefill + decoding through the cache, split inside segments, at their borders and inside memory chunks."""
    model, x = make(name, **overrides), tokens()
    full = model(x).logits
    for schedule in ([7] + [1] * 13, [3, 6, 1, 1, 5, 1, 3], [5, 11, 4], [1] * T):
        assert relative_error(full, checks.decode(model, x, schedule)[0]) < 1e-12, schedule


@forms
@torch.no_grad()
def test_padded_batch_and_beam_search(name, overrides):
    """Left-padded rows give each sequence's own logits and generations; beam search with the cache equals beam
    search without it."""
    model, x = make(name, **overrides), tokens(b=2, t=12)
    mask = torch.ones_like(x)
    x[1, :5], mask[1, :5] = 0, 0
    logits = model(x, attention_mask=mask).logits
    assert relative_error(model(x[1:, 5:]).logits[0], logits[1, 5:]) < 1e-12
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    batch = model.generate(x, attention_mask=mask, **settings)
    assert torch.equal(batch[1, -4:], model.generate(x[1:, 5:], **settings)[0, -4:])
    beams = dict(settings, num_beams=3)
    assert torch.equal(model.generate(x, use_cache=True, **beams), model.generate(x, use_cache=False, **beams))


# ------------------------------------------------------------------ MAC: h = M*_{t−1}(S W_Q) (Eq. 21-25)
def mac_reference(mixer, x):
    """Titans Eq. 21-25 written out, segment by segment: ``h = M*_{t−1}(S W_Q)`` (the memory after the earlier
    segments' writes, read without a write); ``y``: softmax attention of ``S`` over ``[p ∥ h ∥ S]`` where ``S_j``
    sees ``p``, ``h_i`` and ``S_i`` for ``i ≤ j``, RoPE at the positions of ``[h ∥ S]``; the memory writes ``y``;
    ``o = y ⊗ M(y)``."""
    att, memory, c = mixer.attention, mixer.memory, mixer.segment
    b, d, heads, group = x.shape[0], att.head_dim, att.num_heads, att.num_heads // att.num_kv_heads
    ys, cache = [], None
    for s in range(0, x.shape[1], c):
        segment = x[:, s:s + c]
        n = segment.shape[1]
        h = memory.read(segment, memory.memory_state(cache))
        context, positions = torch.cat((h, segment), 1), torch.cat((torch.arange(n), c + torch.arange(n)))
        q = apply_rope(att.q_proj(segment).view(b, n, heads, d), (c + torch.arange(n)).expand(b, n))
        k = apply_rope(att.k_proj(context).view(b, 2 * n, -1, d), positions.expand(b, 2 * n))
        v = att.v_proj(context).view(b, 2 * n, -1, d)
        k = torch.cat((att.persistent_k.expand(b, -1, -1, -1), k), 1).repeat_interleave(group, 2)
        v = torch.cat((att.persistent_v.expand(b, -1, -1, -1), v), 1).repeat_interleave(group, 2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        i, j = torch.arange(n), torch.arange(n)[:, None]
        seen = torch.cat((torch.ones(n, att.persistent_tokens, dtype=torch.bool), i <= j, i <= j), 1)
        scores = scores.masked_fill(~seen, -math.inf)
        y = att.o_proj(torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, n, -1))
        cache = memory(y, past_key_values=cache, use_cache=True)[2]  # M_t = M_{t−1}(y_t)
        ys.append(y)
    y = torch.cat(ys, 1)
    return mixer.combine(y, memory(y)[0])


@pytest.mark.parametrize("segment", [8, 6])
@torch.no_grad()
def test_mac_reads_the_memory_at_the_segment_tokens(segment):
    mixer = make("titans-mac", segment_size=segment).model.layers[0].mixers[0]
    with torch.no_grad():  # persistent tokens large enough to matter
        mixer.attention.persistent_k.normal_()
        mixer.attention.persistent_v.normal_()
    x = torch.randn(2, T, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert relative_error(mac_reference(mixer, x), mixer(x)[0]) < 1e-12


def test_mac_learned_queries_are_the_option_of_earlier_versions():
    segment = make("titans-mac").model.layers[0].mixers[0]
    learned = make("titans-mac", mac_queries="learned").model.layers[0].mixers[0]
    assert segment.queries is None and tuple(learned.queries.shape) == (2, 64)


# ------------------------------------------------------------------ MAG / MAL: M([p] ∥ x) (Eq. 26-30)
def persistent_memories(name, **overrides):
    return [m for m in make(name, **overrides).modules() if isinstance(m, PersistentMemory)]


@pytest.mark.parametrize("name", GATE_LAYER_PRESETS)
@torch.no_grad()
def test_mag_mal_memory_writes_the_persistent_tokens_first(name):
    """The memory's output is ``M([p] ∥ x)`` without the outputs at ``p``, and it changes with ``p``."""
    layers = persistent_memories(name)
    assert len(layers) == 1  # the tiny MAG / MAL has one block
    layer, x = layers[0], torch.randn(2, T, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = layer.persistent.expand(2, -1, -1)
    out = layer(x)[0]
    assert relative_error(layer.memory(torch.cat((p, x), 1))[0][:, p.shape[1]:], out) < 1e-12
    layer.persistent.add_(torch.randn_like(layer.persistent))
    assert not torch.allclose(layer(x)[0], out)


@pytest.mark.parametrize("name", ["titans-mag", "titans-mal"])
def test_mag_mal_without_persistent_memory_read_x_alone(name):
    assert persistent_memories(name, memory_persistent=False) == []
    assert persistent_memories(name, persistent_tokens=0) == []
    mixer = make(name, memory_persistent=False).model.layers[0].mixers[0]
    assert type(mixer if name == "titans-mal" else mixer.memory) is MemoryMixer


# ------------------------------------------------------------------ config, presets, checkpoints
@pytest.mark.parametrize("name", TITANS_BLOCK_PRESETS)
def test_presets_and_new_configs_take_the_paper_forms(name):
    config = preset_config(name)
    assert (config.mac_queries, config.memory_persistent) == ("segment", True)
    assert (NestedMemoryConfig().mac_queries, NestedMemoryConfig().memory_persistent) == ("segment", True)


@pytest.mark.parametrize("field, value", [("mac_queries", "slots"), ("memory_persistent", 1)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"NestedMemoryConfig.{field} ") as error:
        NestedMemoryConfig(architecture="mac", **{field: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, overrides", [("titans-mac", {}), ("titans-mag", {}), ("titans-mal", {}),
                                             ("titans-mac", dict(mac_queries="learned")),
                                             ("titans-mag", dict(memory_persistent=False))])
@torch.no_grad()
def test_saved_configs_keep_their_form(name, overrides, tmp_path):
    model, x = make(name, **overrides), tokens()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {"mac_queries", "memory_persistent"} <= saved.keys()
    loaded = NestedMemoryForCausalLM.from_pretrained(tmp_path).double().eval()
    assert (loaded.config.mac_queries, loaded.config.memory_persistent) == (model.config.mac_queries,
                                                                             model.config.memory_persistent)
    assert torch.equal(model(x).logits, loaded(x).logits)


@pytest.mark.parametrize("name", ["titans-mac", "titans-mag", "titans-mal"])
@torch.no_grad()
def test_configs_saved_before_the_fields_existed_load_the_earlier_forms(name, tmp_path):
    """A checkpoint of an earlier version (its config.json without ``mac_queries`` / ``memory_persistent``) builds
    the model it was saved from: learned MAC queries, MAG / MAL memories over ``x`` alone."""
    model, x = make(name, mac_queries="learned", memory_persistent=False), tokens()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mac_queries"], config["memory_persistent"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = NestedMemoryForCausalLM.from_pretrained(tmp_path).double().eval()
    assert (loaded.config.mac_queries, loaded.config.memory_persistent) == ("learned", False)
    assert torch.equal(model(x).logits, loaded(x).logits)


# ------------------------------------------------------------------ attention at given positions
def test_attention_at_given_positions():
    """Explicit RoPE positions equal to the counted ones change nothing; shifted ones neither (RoPE is relative);
    others move the keys."""
    torch.manual_seed(0)
    layer = Attention(16, 4).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    out = layer(x)[0]
    assert torch.equal(layer(x, positions=torch.arange(6))[0], out)
    assert torch.equal(layer(x, positions=torch.arange(6).expand(2, 6))[0], out)
    assert relative_error(out, layer(x, positions=torch.arange(6) + 3)[0]) < 1e-12
    assert not torch.allclose(layer(x, positions=torch.tensor([0, 2, 1, 3, 5, 4]))[0], out)
