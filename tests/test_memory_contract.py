"""The contract of ``memorize``: causality, decoding / resuming a state, argument checks, numerics."""

import math

import pytest
import torch

from nestedmemory.cli import relative_error
from nestedmemory.memory import MemoryRule, MemoryState, memorize, newton_schulz
from nestedmemory.memory.catalog import all_rules, random_inputs

B, H, D = 2, 2, 4
RULES = list(all_rules(chunk_size=4))
MORE = [MemoryRule(memory="linear", learner="omega", window=3, chunk_size=4),
        MemoryRule(memory="mlp", learner="muon", window=2, chunk_size=3),
        MemoryRule(memory="mlp", gated=True, feature_map="poly", learner="momentum", chunk_size=3)]


def rid(rule):
    return f"{rule.memory}-{rule.objective}-{rule.retention}-{rule.learner}-w{rule.window}"


@pytest.mark.parametrize("mode", ["chunked", "recurrent"])
@pytest.mark.parametrize("rule", RULES + MORE, ids=rid)
def test_causality(rule, mode):
    """Changing tokens (q, k, v and every gate) after t never changes the outputs at or before t."""
    length, t = 9, 5
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, B, length, H, D, generator=g)
    q2, k2, v2, gates2 = random_inputs(rule, B, length, H, D, generator=g)

    def splice(a, b):
        return torch.cat([a[:, :t + 1], b[:, t + 1:]], dim=1)

    state = rule.init_state(B, H, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, _ = memorize(q, k, v, rule, initial_state=state, mode=mode, **gates)
    other, _ = memorize(splice(q, q2), splice(k, k2), splice(v, v2), rule, initial_state=state, mode=mode,
                        **{n: splice(gates[n], gates2[n]) for n in gates})
    assert torch.equal(out[:, :t + 1], other[:, :t + 1])
    assert not torch.allclose(out[:, t + 1:], other[:, t + 1:])


@pytest.mark.parametrize("rule", RULES[::3] + MORE, ids=rid)
def test_decoding_equals_the_full_pass(rule):
    """Prefill (chunked), then one token at a time (recurrent), then a chunked call from mid-chunk: the same
    outputs and final state as one full pass."""
    length, prefill = 14, 5
    q, k, v, gates = random_inputs(rule, B, length, H, D, generator=torch.Generator().manual_seed(0))
    state = rule.init_state(B, H, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full, full_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, **gates)

    def part(a, b, x):
        return x[:, a:b]

    pieces, s = [], state
    cuts = [(0, prefill, "chunked")] + [(t, t + 1, "recurrent") for t in range(prefill, 10)] + [(10, length, "chunked")]
    for a, b, mode in cuts:
        out, s = memorize(part(a, b, q), part(a, b, k), part(a, b, v), rule, initial_state=s,
                          output_final_state=True, mode=mode, **{n: part(a, b, x) for n, x in gates.items()})
        pieces.append(out)
    assert relative_error(full, torch.cat(pieces, 1)) < 1e-12
    assert s.offset == full_state.offset == length % rule.chunk_size
    for a, b in zip(full_state.weights, s.weights):
        assert relative_error(a, b) < 1e-12


def test_state_detach_and_empty_input():
    rule = MemoryRule(memory="mlp", learner="momentum", chunk_size=4)
    q, k, v, gates = random_inputs(rule, B, 6, H, D, requires_grad=True)
    _, state = memorize(q, k, v, rule, output_final_state=True, **gates)
    assert state.weights[0].requires_grad and not state.detach().weights[0].requires_grad
    out, same = memorize(q[:, :0], k[:, :0], v[:, :0], rule, initial_state=state, output_final_state=True,
                         **{n: x[:, :0] for n, x in gates.items()})
    assert out.shape == (B, 0, H, D) and same.offset == state.offset


def test_initial_state_shared_across_the_batch():
    """A learnable initial state ``[H, in, out]`` (an ``nn.Parameter``) broadcasts over the batch."""
    rule = MemoryRule(memory="mlp", learner="momentum", chunk_size=3)
    q, k, v, gates = random_inputs(rule, B, 7, H, D)
    shared = [torch.nn.Parameter(torch.randn(H, i, o, dtype=torch.float64)) for i, o in rule.weight_shapes(D)]
    out, _ = memorize(q, k, v, rule, initial_state=MemoryState(weights=shared), **gates)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)


def test_default_initial_state_is_the_same_on_every_call():
    """Without an ``initial_state`` the MLP memory starts from one fixed draw: ``memorize`` is a function."""
    rule = MemoryRule(memory="mlp", learner="momentum", chunk_size=3)
    a, b = rule.init_state(B, H, D), rule.init_state(B, H, D)
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    q, k, v, gates = random_inputs(rule, B, 7, H, D)
    assert torch.equal(memorize(q, k, v, rule, **gates)[0], memorize(q, k, v, rule, **gates)[0])
    other = rule.init_state(B, H, D, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a.weights[0], other.weights[0])


def test_zero_output_starts_the_mlp_memory_at_zero():
    """``zero_output``: the output layer starts at 0 (``M_0(x) = 0`` without the residual), the hidden layers keep
    their draw, and within the first chunk the gradient reaches only the output layer (``δ W_Lᵀ = 0`` below it):
    the first layer only decays."""
    rule = MemoryRule(memory="mlp", residual=False, zero_output=True, chunk_size=4)
    state = rule.init_state(B, H, D, dtype=torch.float64)
    drawn = MemoryRule(memory="mlp", residual=False).init_state(B, H, D, dtype=torch.float64)
    assert not state.weights[-1].any() and torch.equal(state.weights[0], drawn.weights[0])
    q, k, v, gates = random_inputs(rule, B, 4, H, D)
    _, final = memorize(q, k, v, rule, initial_state=state, output_final_state=True, **gates)
    assert final.weights[-1].abs().min() > 0
    kept = (1 - gates["decay"]).prod(1)[..., None, None]
    torch.testing.assert_close(final.weights[0], state.weights[0] * kept)


# ------------------------------------------------------------------------------------------ bad input
TITANS = MemoryRule(memory="linear", learner="momentum", chunk_size=4)


def call(**changes):
    q, k, v, gates = random_inputs(TITANS, B, 6, H, D)
    args = dict(q=q, k=k, v=v, rule=TITANS, **gates)
    args.update(changes)
    return memorize(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("rule"), **args)


@pytest.mark.parametrize("make,error,words", [
    (lambda: MemoryRule(objective="lp", p=0.5), ValueError, "p must be >= 1"),
    (lambda: MemoryRule(window=0), ValueError, "window"),
    (lambda: MemoryRule(chunk_size=0), ValueError, "chunk_size"),
    (lambda: MemoryRule(memory="mlp", depth=5), ValueError, "depth"),
    (lambda: MemoryRule(learner="adam"), ValueError, "learner='adam'"),
    (lambda: MemoryRule(objective="cosine"), ValueError, "objective='cosine'"),
    (lambda: MemoryRule(retention="kl", learner="momentum"), ValueError, "retention='kl'"),
    (lambda: MemoryRule(retention="lq", q=1.5), ValueError, "q must be >= 2"),
    (lambda: MemoryRule(learner="muon", proximal=True), ValueError, "proximal"),
    (lambda: MemoryRule(learner="omega", window=2, proximal=True), ValueError, "proximal"),
    (lambda: MemoryRule(learner="dgd", proximal=True, relaxation=2.5), ValueError, "relaxation"),
    (lambda: MemoryRule(learner="dgd", relaxation=1.5), ValueError, "relaxation"),
    (lambda: MemoryRule(learner="dgd", inner_lr_max=0.5), ValueError, "inner_lr_max"),
    (lambda: MemoryRule(memory="mlp", learner="gd", inner_lr_max=0.5), ValueError, "inner_lr_max"),
    (lambda: MemoryRule(memory="mlp", learner="dgd", inner_lr_max=0.0), ValueError, "inner_lr_max"),
    (lambda: MemoryRule(zero_output=True), ValueError, "zero_output"),
    (lambda: MemoryRule(memory="mlp", layernorm=True, zero_output=True), ValueError, "zero_output"),
    (lambda: call(k=torch.randn(B, 6, H, D + 1, dtype=torch.float64)), ValueError, "q and k"),
    (lambda: call(v=torch.randn(B, 5, H, D, dtype=torch.float64)), ValueError, "v must be"),
    (lambda: call(q=torch.randn(B, 6, H, dtype=torch.float64)), ValueError, "q must be [batch, seq, heads, dim]"),
    (lambda: call(q=torch.randn(B, 6, H, D, dtype=torch.float32)), TypeError, "share a dtype"),
    (lambda: call(lr=torch.rand(B, 6, H + 1, dtype=torch.float64)), ValueError, "lr must have shape"),
    (lambda: call(lr=torch.rand(B, 6, H, dtype=torch.float32)), TypeError, "lr has dtype"),
    (lambda: call(lr=None), ValueError, "lr"),
    (lambda: call(momentum=None), ValueError, "momentum"),
    (lambda: call(threshold=torch.rand(B, 6, H, dtype=torch.float64)), ValueError, "threshold"),
    (lambda: call(window_gates=torch.rand(B, 6, H, 2, dtype=torch.float64)), ValueError, "window_gates"),
    (lambda: call(mode="fast"), ValueError, "mode='fast'"),
    (lambda: call(rule="titans"), TypeError, "rule must be a MemoryRule"),
    (lambda: call(initial_state=MemoryState(weights=[torch.zeros(B, H, D + 1, D)])), ValueError,
     "initial_state.weights[0]"),
    (lambda: call(rule=MemoryRule(memory="mlp", learner="momentum"),
                  decay=torch.rand(B, 6, H, D, dtype=torch.float64)), ValueError, "channel-wise decay"),
    (lambda: call(rule=MemoryRule(memory="linear", learner="momentum", feature_map="poly"),
                  feature_coeffs=-torch.ones(3)), ValueError, "feature_coeffs"),
])
def test_bad_input_names_the_problem(make, error, words):
    with pytest.raises(error) as info:
        make()
    assert words in str(info.value)


# ------------------------------------------------------------------------------------------ numerics
def test_low_precision_inputs_keep_an_fp32_state():
    rule = MemoryRule(memory="mlp", learner="momentum", chunk_size=4)
    q, k, v, gates = random_inputs(rule, B, 8, H, D, dtype=torch.bfloat16)
    out, state = memorize(q, k, v, rule, output_final_state=True, **gates)
    assert out.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in state.weights + state.momentum)


def test_autocast_does_not_lower_the_memory_precision():
    rule = MemoryRule(memory="mlp", learner="muon", chunk_size=4)
    q, k, v, gates = random_inputs(rule, B, 8, H, D, dtype=torch.float32)
    state = rule.init_state(B, H, D, generator=torch.Generator().manual_seed(0))
    plain, _ = memorize(q, k, v, rule, initial_state=state, **gates)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _ = memorize(q, k, v, rule, initial_state=state, **gates)
    assert auto.dtype == torch.float32 and torch.equal(plain, auto)


def test_newton_schulz_orthogonalises_in_fp32():
    s = torch.randn(3, 16, 8, dtype=torch.bfloat16)
    o = newton_schulz(s, 5)
    assert o.dtype == torch.bfloat16
    singular = torch.linalg.svdvals(o.float())
    assert singular.min() > 0.6 and singular.max() < 1.25


@pytest.mark.parametrize("shape", [(4, 5, 9), (2, 3, 7, 4)], ids=["wide", "tall"])
def test_newton_schulz_backward_equals_autograd_through_its_steps_fp64(shape):
    """The hand-derived backward of the quintic steps (maps._QuinticSteps) against autograd through the literal
    steps: first derivatives, and second derivatives (``create_graph``, as a CMS outer loop takes)."""
    from nestedmemory.memory import maps

    def literal(s):
        x = s.transpose(-1, -2) if s.shape[-2] > s.shape[-1] else s
        x = maps._quintic_steps((x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)).flatten(0, -3), 5)
        x = x.view(*s.shape[:-2], *x.shape[-2:])
        return x.transpose(-1, -2) if s.shape[-2] > s.shape[-1] else x

    g = torch.Generator().manual_seed(0)
    s = torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
    cotangent, direction = (torch.randn(*shape, dtype=torch.float64, generator=g) for _ in range(2))
    torch.testing.assert_close(newton_schulz(s, 5), literal(s), rtol=0, atol=1e-14)
    fast, = torch.autograd.grad(newton_schulz(s, 5), s, cotangent)
    ref, = torch.autograd.grad(literal(s), s, cotangent)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    def second(f):
        first, = torch.autograd.grad(f(s), s, cotangent, create_graph=True)
        return torch.autograd.grad((first * direction).sum(), s)[0]

    torch.testing.assert_close(second(lambda t: newton_schulz(t, 5)), second(literal), rtol=1e-10, atol=1e-12)


def test_newton_schulz_and_its_backward_stay_fp32_inside_autocast():
    s = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    plain = newton_schulz(s, 5)
    grad, = torch.autograd.grad(plain.sum(), s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = newton_schulz(s, 5)
        auto_grad, = torch.autograd.grad(auto.sum(), s)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain) and torch.equal(auto_grad, grad)


@pytest.mark.parametrize("name", ["gelu", "silu", "relu", "tanh", "identity"])
def test_activation_backward_is_the_activation_s_derivative(name):
    """``activation_backward(g, z) = g ⊙ σ'(z)`` equals autograd's, and is itself differentiable (the write
    factors' δ carry outer gradients through it): its gradients match finite differences in fp64."""
    from nestedmemory.memory.nets import activation, activation_backward
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, dtype=torch.float64, generator=g).requires_grad_()
    grad = torch.randn(3, 5, dtype=torch.float64, generator=g).requires_grad_()
    expected, = torch.autograd.grad(activation(name, z), z, grad, create_graph=True)
    torch.testing.assert_close(activation_backward(name, grad, z), expected, rtol=1e-12, atol=1e-12)
    if name != "relu":  # relu's derivative is piecewise constant
        assert torch.autograd.gradcheck(lambda a, b: activation_backward(name, a, b), (grad, z))


def test_segsum_is_exact_for_large_prefix_sums_and_minus_infinity():
    """``segsum``'s differences of prefix sums are taken in fp64: exact to fp32 rounding however large the prefix
    sums grow (log-decays of −80 per token over 256 tokens), and a ``−inf`` log-decay (a zero decay) gives zero
    decays across it, never NaN."""
    from nestedmemory.memory.chunked import segsum
    g = torch.Generator().manual_seed(0)
    x = -80 * torch.rand(2, 256, generator=g)
    x[:, ::7] = -1e-3 * torch.rand(2, 37, generator=g)
    got = segsum(x)
    lower = torch.ones(256, 256, dtype=torch.bool).tril()
    ref = torch.zeros(2, 256, 256, dtype=torch.float64)
    for t in range(256):
        for j in range(t + 1):
            ref[:, t, j] = x[:, j + 1:t + 1].double().sum(-1)
    assert (got[:, ~lower] == -math.inf).all()
    torch.testing.assert_close(got[:, lower].double(), ref[:, lower], rtol=2 ** -23, atol=0)  # one rounding
    x = torch.full((5,), -0.1)
    x[2] = -math.inf
    d = torch.exp(segsum(x))
    assert torch.isfinite(d).all() and d[3, 1] == 0 and d[4, 3] == pytest.approx(math.exp(-0.1))
    x = (-torch.rand(2, 3, 9, dtype=torch.float64, generator=g)).requires_grad_()  # its hand-written backward
    assert torch.autograd.gradcheck(lambda t: torch.exp(segsum(t)), (x,))
    assert torch.autograd.gradgradcheck(lambda t: torch.exp(segsum(t)), (x,))
