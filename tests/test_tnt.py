"""TNT's hierarchical memory (TNTMemory): the chunk-parallel layer equals a literal token-by-token reference
(outputs, final states, gradients), causality, shard independence, decoding, Stage 2, argument checks, and the
projected query's scale over a paper-length shard (with the ``tnt`` preset finite there)."""

from contextlib import contextmanager
import math
from types import MethodType

import pytest
from checks import assert_causal, frozen
import torch

from nestedmemory.data import shakespeare
from nestedmemory.layers import LayerStates, TNTMemory
from nestedmemory.layers.tnt import project_queries
from nestedmemory.memory import MemoryRule, memorize
from nestedmemory.models import from_preset, preset_config

DIM, HEADS, HEAD_DIM = 24, 2, 12
RULES = {
    "titans": dict(memory="mlp", objective="l2", retention="decay", learner="momentum"),
    "titans-linear": dict(memory="linear", objective="l2", retention="decay", learner="momentum"),
    "omeganet": dict(memory="linear", feature_map="poly", objective="l2", retention="decay", learner="omega",
                     window=3),
    "moneta": dict(memory="mlp", layernorm=True, objective="lp", retention="lq", learner="gd"),
}
#: (C_G, C_L, S_L, T): lengths off the chunk and shard grids, C_G above and below the shards, C_L = S_L, C_L = 1.
SIZES = [(8, (2, 4), (4, 8), 19), (4, (1,), (6,), 13), (16, (3, 5), (6, 5), 17)]


def make(name="titans", global_chunk=8, local_chunks=(2, 4), shards=(4, 8), **kwargs):
    torch.manual_seed(0)
    rule = MemoryRule(**RULES[name], chunk_size=global_chunk)
    return TNTMemory(DIM, HEADS, HEAD_DIM, rule=rule, local_chunk_sizes=local_chunks, shard_sizes=shards,
                     **kwargs).double()


def inputs(batch=2, length=19, seed=1):
    return torch.randn(batch, length, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _step(gates, t):
    return {name: g if name == "feature_coeffs" else g[:, t:t + 1] for name, g in gates.items()}


def reference_mix(layer, q, k, v, x, cache, use_cache):
    """Eq. 5-7 / 14-15 token by token with the core's ``recurrent`` mode: the global memory is read at the state
    it had when its current chunk began, then written; each local memory is reset to its initial state and its
    projector to zero when ``t ≡ 0 (mod S_L)``, its projector takes ``k_t k_tᵀ`` and it is read with the projected
    query (ℓ2-normalised unless ``qk_projection="sum"``) after the write of ``t``."""
    assert cache is None
    b, t_len, h, d = q.shape
    state = start = layer.initial_state()
    gates = layer.gates(x)
    local_gates = [m.gates(x) for m in layer.local_memories]
    local_states, projectors = [None] * len(local_gates), [None] * len(local_gates)
    outs = []
    for t in range(t_len):
        qt, kt, vt = q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1]
        if t % layer.rule.chunk_size == 0:
            start = state
        out, _ = memorize(qt, qt, torch.zeros_like(vt), layer.rule, initial_state=start, mode="recurrent",
                          **frozen(_step(gates, t)))
        _, state = memorize(qt, kt, vt, layer.rule, initial_state=state, output_final_state=True, mode="recurrent",
                            **_step(gates, t))
        for i, memory in enumerate(layer.local_memories):
            if t % memory.shard_size == 0:
                local_states[i], projectors[i] = memory.initial_state(), q.new_zeros(b, h, d, d)
            projectors[i] = projectors[i] + kt[:, 0].unsqueeze(-1) * kt[:, 0].unsqueeze(-2)
            projected = torch.einsum("bhij,bhj->bhi", projectors[i], qt[:, 0]).unsqueeze(1)
            if layer.qk_projection == "normalized":
                projected = projected / projected.norm(dim=-1, keepdim=True)
            read, local_states[i] = memorize(projected, kt, vt, memory.rule, initial_state=local_states[i],
                                             output_final_state=True, mode="recurrent", **_step(local_gates[i], t))
            out = out + read
        outs.append(out)
    locals_ = [None if t_len % m.shard_size == 0 else {"memory": s, "projector": p}
               for m, s, p in zip(layer.local_memories, local_states, projectors)]
    return torch.cat(outs, 1), {"memory": state, "start": start, "locals": locals_, "position": t_len}


@contextmanager
def recurrent(layer):
    layer.mix = MethodType(reference_mix, layer)
    try:
        yield layer
    finally:
        del layer.mix


def run(layer, x, seed=2):
    """Output, cache entry and gradients (w.r.t. ``x`` and every parameter) of a fixed random functional."""
    layer.zero_grad()
    x = x.clone().requires_grad_()
    out, _, cache = layer(x, use_cache=True)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    (out * w).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    return out.detach(), cache[0], x.grad, grads


def assert_states_close(a, b):
    for name in ("weights", "momentum"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        for u, w in zip(left or [], right or []):
            torch.testing.assert_close(u.expand_as(w), w, rtol=1e-9, atol=1e-11)
    assert a.offset == b.offset


CASES = [(name, sizes, "normalized") for name in RULES for sizes in SIZES]
CASES += [("titans", sizes, "sum") for sizes in SIZES]  # the printed, un-normalised projection


@pytest.mark.parametrize("name, sizes, qk_projection", CASES,
                         ids=[f"{n}-CG{s[0]}-CL{s[1]}-S{s[2]}-T{s[3]}-{p}" for n, s, p in CASES])
def test_chunked_equals_token_by_token_reference(name, sizes, qk_projection):
    global_chunk, local_chunks, shards, length = sizes
    layer = make(name, global_chunk, local_chunks, shards, qk_projection=qk_projection)
    x = inputs(length=length)
    out, cache, dx, grads = run(layer, x)
    with recurrent(layer):
        ref_out, ref_cache, ref_dx, ref_grads = run(layer, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-8, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for pname in grads:
        torch.testing.assert_close(grads[pname], ref_grads[pname], rtol=1e-8, atol=1e-10, msg=pname)
    assert_states_close(cache["memory"], ref_cache["memory"])
    assert_states_close(cache["start"], ref_cache["start"])
    assert cache["position"] == ref_cache["position"] == length
    for mine, ref in zip(cache["locals"], ref_cache["locals"]):
        assert (mine is None) == (ref is None)
        if mine is not None:
            assert_states_close(mine["memory"], ref["memory"])
            torch.testing.assert_close(mine["projector"], ref["projector"], rtol=1e-9, atol=1e-11)


def test_global_memory_is_read_at_its_chunk_start():
    """Within the first global chunk the global read is f(V_0, q_t): the global gates do not reach the output."""
    layer, x = make(global_chunk=32), inputs(length=19)
    out = layer(x)[0]
    with torch.no_grad():
        layer.lr.proj.bias.add_(1.0)
        layer.momentum.proj.bias.add_(1.0)
    torch.testing.assert_close(layer(x)[0], out, rtol=0, atol=0)
    layer = make(global_chunk=8)                           # later chunks do see the global writes
    out = layer(x)[0]
    with torch.no_grad():
        layer.lr.proj.bias.add_(1.0)
    changed = layer(x)[0]
    assert torch.equal(changed[:, :8], out[:, :8]) and not torch.allclose(changed[:, 8:], out[:, 8:])


@pytest.mark.parametrize("name", RULES)
def test_causal(name):
    assert_causal(make(name), inputs(), 6)


@pytest.mark.parametrize("name", ["titans", "omeganet"])
def test_local_shards_are_independent(name):
    """Changing the tokens of shard s changes every local read inside it and none outside it."""
    layer = make(name, local_chunks=(2, 1), shards=(4, 6))
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.nn.functional.normalize(torch.randn(2, 19, HEADS, HEAD_DIM, generator=g,
                                                         dtype=torch.float64), dim=-1) for _ in range(3))
    x = inputs()
    for i, memory in enumerate(layer.local_memories):
        s = memory.shard_size
        base, _ = layer.local_read(i, q, k, v, x, None, 0, False)
        inside = slice(s, 2 * s)
        changed = [t.clone() for t in (q, k, v, x)]
        for t in changed:
            t[:, inside] = torch.randn(t[:, inside].shape, generator=g, dtype=torch.float64)
        q2, k2 = (torch.nn.functional.normalize(t, dim=-1) for t in changed[:2])
        out, _ = layer.local_read(i, q2, k2, changed[2], changed[3], None, 0, False)
        # shards share batched kernels, so "unchanged" is up to fp64 round-off; the changed shard moves by O(1)
        torch.testing.assert_close(out[:, :s], base[:, :s], rtol=0, atol=1e-14)
        torch.testing.assert_close(out[:, 2 * s:], base[:, 2 * s:], rtol=0, atol=1e-14)
        assert ((out[:, inside] - base[:, inside]).abs().amax(dim=(0, 2, 3)) > 1e-3).all()


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("prefill", [1, 5, 8])
def test_prefill_then_decoding_equals_the_full_pass(name, prefill):
    layer, x = make(name), inputs()
    full = layer(x)[0]
    out, _, cache = layer(x[:, :prefill], use_cache=True)
    pieces = [out]
    for t in range(prefill, x.shape[1], 3):           # chunks of 3 tokens cross chunk and shard boundaries
        out, _, cache = layer(x[:, t:t + 3], past_key_values=cache, use_cache=True)
        pieces.append(out)
    assert isinstance(cache, LayerStates) and cache[0]["position"] == x.shape[1]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-9, atol=1e-12)
    out, _, cache = layer(x[:, :prefill], use_cache=True)
    pieces = [out] + [layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0]
                      for t in range(prefill, x.shape[1])]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-9, atol=1e-12)


def test_left_padding_gives_the_unpadded_outputs():
    layer, x = make(), inputs(length=12)
    mask = torch.ones(2, 12)
    mask[1, :4] = 0
    padded = x.clone()
    padded[1, :4] = 5.0
    out = layer(padded, attention_mask=mask)[0]
    torch.testing.assert_close(out[0], layer(x[:1])[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1, 4:], layer(x[1:, 4:])[0][0], rtol=1e-12, atol=1e-12)


def test_every_parameter_learns():
    layer = make()
    layer(inputs())[0].square().mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_projector_is_the_running_sum_of_key_outer_products():
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, 23, HEADS, HEAD_DIM, generator=g, dtype=torch.float64) for _ in range(2))
    carry = torch.randn(2, HEADS, HEAD_DIM, HEAD_DIM, generator=g, dtype=torch.float64)
    carry = carry + carry.transpose(-1, -2)
    running, expected = carry.clone(), []
    for t in range(23):
        running = running + k[:, t].unsqueeze(-1) * k[:, t].unsqueeze(-2)
        expected.append(torch.einsum("bhij,bhj->bhi", running, q[:, t]))
    for block in (1, 5, 64):
        out, final = project_queries(q, k, carry, block=block)
        torch.testing.assert_close(out, torch.stack(expected, 1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final, running, rtol=1e-12, atol=1e-12)


def test_stage2_changes_only_the_local_chunk_sizes():
    layer, x = make(local_chunks=(2, 4), shards=(4, 8)), inputs()
    before = {name: t.clone() for name, t in layer.state_dict().items()}
    rules = [m.rule for m in layer.local_memories]
    global_rule, out = layer.rule, layer(x)[0]
    layer.set_local_chunk_sizes([1, 2])
    after = layer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert layer.rule == global_rule and layer.shard_sizes == (4, 8) and layer.local_chunk_sizes == (1, 2)
    assert [m.rule for m in layer.local_memories] == [
        MemoryRule(**{**r.__dict__, "chunk_size": c}) for r, c in zip(rules, (1, 2))]
    assert not torch.allclose(layer(x)[0], out)
    new_out, _, _, _ = run(layer, x)
    with recurrent(layer):
        torch.testing.assert_close(run(layer, x)[0], new_out, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="local_chunk_sizes"):
        layer.set_local_chunk_sizes([3, 2])                # 3 does not divide S_L = 4
    with pytest.raises(ValueError, match="local_chunk_sizes needs 2 entries"):
        layer.set_local_chunk_sizes([1])


def test_projected_query_keeps_the_query_scale_over_a_4k_shard():
    """Over one shard of 4,096 random unit keys (D = 64, the paper sizes' head width): the printed ``Σ k kᵀ q``
    grows ≈ n/D with the n keys so far (≈ 64 at position 4,095); the default query ``ℓ2(Σ k kᵀ q)`` has norm 1
    at every position and the printed direction."""
    g = torch.Generator().manual_seed(5)
    q, k = (torch.nn.functional.normalize(torch.randn(1, 4096, 2, 64, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    rule = MemoryRule(**RULES["titans"], chunk_size=16)
    layers = {p: TNTMemory(128, 2, 64, rule=rule, local_chunk_sizes=(16,), shard_sizes=4096, qk_projection=p)
              for p in ("normalized", "sum")}
    printed, projector = layers["sum"].project(q, k)
    normalized, same = layers["normalized"].project(q, k)
    torch.testing.assert_close(same, projector, rtol=0, atol=0)
    assert 50 < printed[0, -1].norm(dim=-1).min() < 80
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(1, 4096, 2, dtype=torch.float64))
    torch.testing.assert_close(normalized, torch.nn.functional.normalize(printed, dim=-1), rtol=0, atol=0)


PAPER_LOCALS = dict(local_chunk_sizes=[16], shard_sizes=4096)  # C_L 16, S_L 4,096 (TNT §7.4's quality runs)


def paper_locals_tnt():
    """The ``tnt`` preset at width 256 (4 heads × 64) with the paper's local memory: one shard of 4,096 tokens, over
    which the printed projected query grows to ≈ 64."""
    torch.manual_seed(0)
    return from_preset("tnt", hidden_size=256, num_heads=4, memory=dict(preset_config("tnt").memory, **PAPER_LOCALS))


def text_with_spaces(length):
    """Shakespeare with a run of 512 spaces from a quarter of the way in (as in tests/test_stability.py)."""
    text = torch.tensor(list(shakespeare(4 * length).encode()[:length]))
    text[length // 4:length // 4 + 512] = ord(" ")
    return text[None]


def assert_finite_logits_and_gradients(model, x):
    out = model(input_ids=x, labels=x)
    assert torch.isfinite(out.logits).all(), "non-finite logits"
    out.loss.backward()
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert math.isfinite(out.loss.item()) and not bad, f"non-finite gradients: {bad[:5]}"


@pytest.mark.slow
def test_tnt_is_finite_over_a_4k_shard_at_initialisation():
    assert_finite_logits_and_gradients(paper_locals_tnt(), text_with_spaces(4096))


@pytest.mark.slow
def test_tnt_is_finite_over_a_4k_shard_after_30_training_steps():
    """30 AdamW steps (lr 3e-3, batch 2 × 64) on the embedded corpus, then T = 4,096 in one shard."""
    model = paper_locals_tnt()
    data, g = torch.tensor(list(shakespeare(200_000).encode())), torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        batch = torch.stack([data[s:s + 64] for s in torch.randint(0, len(data) - 65, (2,), generator=g)])
        optimizer.zero_grad()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        assert math.isfinite(loss.item()), f"training diverged at step {step}"
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.zero_grad()
    assert_finite_logits_and_gradients(model, text_with_spaces(4096))


@pytest.mark.parametrize("kwargs, match", [
    (dict(local_chunks=(3,), shards=8), "local_chunk_sizes entry 3 must divide its shard_sizes entry 8"),
    (dict(qk_projection="unit"), "qk_projection"),
    (dict(local_chunks=(0,), shards=8), "local_chunk_sizes"),
    (dict(local_chunks=(-2,), shards=8), "local_chunk_sizes"),
    (dict(local_chunks=(), shards=8), "local_chunk_sizes"),
    (dict(local_chunks=(2,), shards=0), "shard_sizes"),
    (dict(local_chunks=(2,), shards=(4, 0)), "shard_sizes"),
    (dict(local_chunks=(2, 2), shards=(4, 4, 4)), "shard_sizes has 3 entries"),
    (dict(local_chunks=(2.0,), shards=4), "local_chunk_sizes"),
    (dict(global_chunk=0), "chunk_size"),
])
def test_bad_sizes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)
