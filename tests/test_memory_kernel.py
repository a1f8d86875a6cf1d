"""The exponential feature map ``φ*`` as an exact kernel memory (DeepTransformers / Dot, Atlas §4).

The two paths store different ``(K, C)`` for the same memory, so states are compared as functions: reads
``exp(x Kᵀ) C`` at random probe queries.
"""

import itertools

import pytest
import torch

from nestedmemory.cli import relative_error
from nestedmemory.memory import MemoryRule, MemoryState, memorize
from nestedmemory.memory.catalog import random_inputs
from nestedmemory.memory.kernel import read
from nestedmemory.memory.nets import default_poly_coeffs, poly_features

B, H, D = 2, 2, 4
DT = torch.float64
RULES = [MemoryRule(feature_map="exp", objective=o, retention=r, learner=lrn, window=w)
         for o in ("dot", "l2") for r in ("none", "decay") for lrn, w in (("gd", 1), ("omega", 3), ("dgd", 1))]


def rid(rule):
    return f"{rule.objective}-{rule.retention}-{rule.learner}-w{rule.window}"


def with_chunk(rule, chunk_size):
    return MemoryRule(**{**rule.__dict__, "chunk_size": chunk_size})


def unit(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.nn.functional.normalize(torch.randn(*shape, dtype=DT, generator=g), dim=-1)


def kernel_state(n=3, seed=0, batch=True):
    """A nonempty initial ``(K, C)`` that requires grad (``[H, N, ·]``, shared over the batch, unless ``batch``)."""
    lead = (B, H) if batch else (H,)
    keys, coefs = unit(*lead, n, D, seed=seed), 0.3 * unit(*lead, n, D, seed=seed + 1)
    return MemoryState(weights=[keys.requires_grad_(), coefs.requires_grad_()])


PROBE = unit(B, H, 5, D, seed=99)


def probe(state):
    """The final memory as a function: its reads at fixed probe queries."""
    return read(state.weights, PROBE)


# ------------------------------------------------------------------------------------------ exactness
def run_both(rule, length, seed=0, scale=False):
    """Outputs, final memories and the gradients of both paths; ``scale``: a per-head kernel scale ``s`` (with its
    gradient)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, gates = random_inputs(rule, B, length, H, D, generator=g, requires_grad=True)
    if scale:
        gates["feature_scale"] = (0.5 + 2 * torch.rand(H, dtype=DT, generator=g)).requires_grad_()
    state = kernel_state(seed=seed, batch=False)
    leaves = [q, k, v, *gates.values(), *state.weights]
    results = {}
    for mode in ("recurrent", "chunked"):
        out, final = memorize(q, k, v, rule, initial_state=state, output_final_state=True, mode=mode, **gates)
        reads = probe(final)
        w = torch.Generator().manual_seed(seed + 1)
        loss = (out * torch.randn(out.shape, dtype=DT, generator=w)).sum() + \
            (reads * torch.randn(reads.shape, dtype=DT, generator=w)).sum()
        results[mode] = [out.detach(), reads.detach(), *torch.autograd.grad(loss, leaves)]
    return results


@pytest.mark.parametrize("rule", RULES, ids=rid)
@pytest.mark.parametrize("chunk_size,length", [(1, 7), (3, 11), (16, 21)])
def test_chunked_matches_recurrent(rule, chunk_size, length):
    results = run_both(with_chunk(rule, chunk_size), length)
    for i, (ref, fast) in enumerate(zip(results["recurrent"], results["chunked"])):
        assert ref.abs().max() > 0, f"tensor #{i} is zero"
        assert relative_error(ref, fast) < 1e-9, f"tensor #{i} differs"


@pytest.mark.parametrize("rule", [r for r in RULES if r.retention == "decay"], ids=rid)
def test_chunked_matches_recurrent_with_a_kernel_scale(rule):
    """``feature_scale`` ``s`` per head: the kernel ``exp(s q·k)`` in reads and writes, both paths, its gradient too."""
    results = run_both(with_chunk(rule, 3), 11, scale=True)
    for i, (ref, fast) in enumerate(zip(results["recurrent"], results["chunked"])):
        assert ref.abs().max() > 0, f"tensor #{i} is zero"
        assert relative_error(ref, fast) < 1e-9, f"tensor #{i} differs"


# ------------------------------------------------------------------------------------------ special cases
@pytest.mark.parametrize("mode,chunk_size", [("recurrent", 4), ("chunked", 1), ("chunked", 4), ("chunked", 16)])
@pytest.mark.parametrize("retention", ["none", "decay"])
@pytest.mark.parametrize("scale", [None, (0.5, 4.0)])
def test_deep_transformer_is_unnormalised_causal_softmax_attention(mode, chunk_size, retention, scale):
    """Dot objective, gd, lr 1, empty state: ``o_t = Σ_{i≤t} (Π_{i<l≤t} a_l) exp(s q_t·k_i) v_i`` (Atlas Eq. 25-26;
    ``s`` per head, ``memorize``'s ``feature_scale``, default 1)."""
    t = 11
    q, k, v = unit(B, t, H, D, seed=1), unit(B, t, H, D, seed=2), unit(B, t, H, D, seed=3)
    rule = MemoryRule(feature_map="exp", objective="dot", retention=retention, learner="gd", chunk_size=chunk_size)
    decay = None
    log_a = torch.zeros(B, t, H, dtype=DT)
    if retention == "decay":
        decay = 0.3 * torch.rand(B, t, H, dtype=DT, generator=torch.Generator().manual_seed(4))
        log_a = torch.log1p(-decay)
    s = None if scale is None else torch.tensor(scale, dtype=DT)
    out, _ = memorize(q, k, v, rule, lr=1.0, decay=decay, feature_scale=s, mode=mode)
    cum = log_a.cumsum(1)
    gate = torch.exp(cum.unsqueeze(2) - cum.unsqueeze(1)).permute(0, 3, 1, 2)   # [B, H, t, i]
    logits = torch.einsum("bthd,bshd->bhts", q, k) * (1.0 if s is None else s.view(1, H, 1, 1))
    scores = torch.exp(logits) * gate
    reference = torch.einsum("bhts,bshd->bthd", scores.tril(), v)
    assert relative_error(reference, out) < 1e-12


@pytest.mark.parametrize("objective,retention,learner", [("l2", "decay", "gd"), ("dot", "none", "dgd")])
def test_truncated_exponential_polynomial_map_agrees(objective, retention, learner):
    """Small keys and queries (norm 0.5): ``poly`` of degree 10 with ``a_i = 1/i!`` is ``exp`` to ~1e-14; the
    initial ``(K, C)`` maps to ``W_0 = φ_10(K)ᵀ C``."""
    b, t, h, d, degree = 1, 9, 2, 3, 10
    q, k, v = unit(b, t, h, d, seed=5, scale=0.5), unit(b, t, h, d, seed=6, scale=0.5), unit(b, t, h, d, seed=7)
    gates = {"lr": 0.2 + 0.6 * torch.rand(b, t, h, dtype=DT, generator=torch.Generator().manual_seed(8))}
    if retention == "decay":
        gates["decay"] = 0.2 * torch.rand(b, t, h, dtype=DT, generator=torch.Generator().manual_seed(9))
    keys, coefs = unit(b, h, 3, d, seed=10, scale=0.5), unit(b, h, 3, d, seed=11)
    feats = poly_features(keys, degree, default_poly_coeffs(degree, DT))
    common = dict(objective=objective, retention=retention, learner=learner, chunk_size=4)
    exp_rule = MemoryRule(feature_map="exp", **common)
    poly_rule = MemoryRule(feature_map="poly", degree=degree, **common)
    for mode in ("recurrent", "chunked"):
        ref, _ = memorize(q, k, v, poly_rule, initial_state=MemoryState(weights=[feats.transpose(-1, -2) @ coefs]),
                          mode=mode, **gates)
        out, _ = memorize(q, k, v, exp_rule, initial_state=MemoryState(weights=[keys, coefs]), mode=mode, **gates)
        assert relative_error(ref, out) < 1e-6


# ------------------------------------------------------------------------------------------ contract
CONTRACT = [with_chunk(r, 4) for r in RULES if r.retention == "decay"]


@pytest.mark.parametrize("rule", CONTRACT, ids=rid)
def test_causality(rule):
    """Changing the tokens (q, k, v, every gate) after t never changes the outputs at or before t."""
    t = 5
    q, k, v, gates = random_inputs(rule, B, 9, H, D, generator=torch.Generator().manual_seed(0))
    inputs = {"q": q, "k": k, "v": v, **gates}

    def later(x):  # the tokens after t reversed and halved (gates stay in range)
        return torch.cat([x[:, :t + 1], 0.5 * x[:, t + 1:].flip(1)], dim=1)

    for mode in ("chunked", "recurrent"):
        out, _ = memorize(rule=rule, initial_state=kernel_state(seed=1), mode=mode, **inputs)
        other, _ = memorize(rule=rule, initial_state=kernel_state(seed=1), mode=mode,
                            **{name: later(x) for name, x in inputs.items()})
        assert torch.equal(out[:, :t + 1], other[:, :t + 1])
        assert not torch.allclose(out[:, t + 1:], other[:, t + 1:])


@pytest.mark.parametrize("rule", CONTRACT, ids=rid)
def test_decoding_equals_the_full_pass(rule):
    """Prefill (chunked), one token at a time (recurrent), then a chunked call from mid-chunk == one full pass."""
    length, prefill = 14, 5
    q, k, v, gates = random_inputs(rule, B, length, H, D, generator=torch.Generator().manual_seed(0))
    state = kernel_state(seed=1)
    full, full_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, **gates)
    pieces, s = [], state
    cuts = [(0, prefill, "chunked")] + [(t, t + 1, "recurrent") for t in range(prefill, 10)] + [(10, length, "chunked")]
    for a, b, mode in cuts:
        out, s = memorize(q[:, a:b], k[:, a:b], v[:, a:b], rule, initial_state=s, output_final_state=True,
                          mode=mode, **{n: x[:, a:b] for n, x in gates.items()})
        pieces.append(out)
    assert relative_error(full, torch.cat(pieces, 1)) < 1e-12
    assert s.offset == full_state.offset == length % rule.chunk_size
    assert relative_error(probe(full_state), probe(s)) < 1e-12
    if rule.window == 1:  # one stored key per token: the chunk grid's padding is never stored
        assert s.weights[0].shape[2] == full_state.weights[0].shape[2] == 3 + length


def test_empty_input_and_fresh_state():
    rule = MemoryRule(feature_map="exp", learner="dgd", chunk_size=4)
    q, k, v, gates = random_inputs(rule, B, 6, H, D)
    out, state = memorize(q[:, :0], k[:, :0], v[:, :0], rule, output_final_state=True,
                          **{n: x[:, :0] for n, x in gates.items()})
    assert out.shape == (B, 0, H, D) and [w.shape for w in state.weights] == [(B, H, 0, D)] * 2
    _, state = memorize(q, k, v, rule, output_final_state=True, **gates)
    assert [w.shape for w in state.weights] == [(B, H, 6, D)] * 2 and state.offset == 2


# ------------------------------------------------------------------------------------------ bad input
EXP = MemoryRule(feature_map="exp", chunk_size=4)


def call(**changes):
    q, k, v, gates = random_inputs(EXP, B, 6, H, D)
    return memorize(q=q, k=k, v=v, rule=EXP, **{**gates, **changes})


@pytest.mark.parametrize("make,words", [
    (lambda: MemoryRule(feature_map="exp", memory="mlp"), "feature_map"),
    (lambda: MemoryRule(feature_map="exp", learner="muon"), "feature_map"),
    (lambda: MemoryRule(feature_map="exp", objective="huber"), "feature_map"),
    (lambda: MemoryRule(feature_map="exp", retention="kl"), "feature_map"),
    (lambda: EXP.weight_shapes(D), "kernel memory"),
    (lambda: call(feature_coeffs=torch.ones(3, dtype=DT)), "feature_coeffs"),
    (lambda: call(feature_scale=torch.ones(H + 1, dtype=DT)), "feature_scale must be a float or a tensor"),
    (lambda: call(feature_scale=0.0), "feature_scale must be > 0"),
    (lambda: memorize(*random_inputs(MemoryRule(), B, 6, H, D)[:3], MemoryRule(), lr=0.1, feature_scale=2.0),
     "feature_scale was given"),
    (lambda: call(lr=torch.rand(B, 6, H, D, dtype=DT)), "channel-wise lr"),
    (lambda: call(initial_state=MemoryState(weights=[torch.zeros(B, H, D, D, dtype=DT)])), "initial_state.weights"),
    (lambda: call(initial_state=MemoryState(weights=[torch.zeros(B, H, 3, D, dtype=DT),
                                                     torch.zeros(B, H, 2, D, dtype=DT)])), "initial_state.weights[1]"),
    (lambda: call(initial_state=MemoryState(weights=[torch.zeros(B, H, 3, D + 1, dtype=DT),
                                                     torch.zeros(B, H, 3, D, dtype=DT)])), "initial_state.weights[0]"),
])
def test_bad_input_names_the_problem(make, words):
    with pytest.raises(ValueError) as info:
        make()
    assert words in str(info.value)



def test_the_window_s_stream_slots_come_from_integers():
    """The exp-kernel memory appends the slots of a chunk's extended (window) tokens that hold stream tokens; they
    are computed from the call's integers (no ``nonzero`` read back from the device) and equal the slots whose
    stream position is valid."""
    from nestedmemory.memory.chunked import _ext_positions, _ext_slots

    for w, halo, t_len, off, c in itertools.product((1, 3), (0, 1, 3), (1, 5, 12), (0, 2, 3), (4,)):
        n_chunks = -(-(off + t_len) // c)
        pos, _ = _ext_positions(w, halo, halo + t_len, off, c, n_chunks, "cpu")
        for n in range(n_chunks):
            slots = torch.cat([torch.arange(w + c)[part] for part in _ext_slots(w, halo, t_len, off, c, n)])
            assert torch.equal(slots, (pos[n] >= 0).nonzero().squeeze(-1)), (w, halo, t_len, off, c, n)
