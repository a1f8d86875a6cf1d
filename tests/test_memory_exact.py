"""chunked == recurrent: outputs, final state and outer gradients, for every rule of the core."""

import pytest
import torch

from nestedmemory.cli import relative_error
from nestedmemory.memory import MemoryRule, memorize
from nestedmemory.memory.catalog import all_rules, random_inputs

B, H, D = 2, 2, 4
RULES = list(all_rules())


def rule_id(rule):
    extra = "".join(f"-{k}{v}" for k, v in (("w", rule.window), ("c", rule.chunk_size)) if v != 1)
    return f"{rule.memory}-{rule.objective}-{rule.retention}-{rule.learner}{extra}"


def with_chunk(rule, chunk_size):
    return MemoryRule(**{**rule.__dict__, "chunk_size": chunk_size})


def random_state(rule, dtype, seed=0):
    """A nonzero initial state (Memora's: logits) that requires grad, with nonzero momentum."""
    g = torch.Generator().manual_seed(seed)
    state = rule.init_state(B, H, D, dtype=dtype, generator=g)
    if rule.retention == "kl":
        state.weights = [torch.randn(w.shape, dtype=dtype, generator=g) for w in state.weights]
    else:
        state.weights = [w + 0.3 * torch.randn(w.shape, dtype=dtype, generator=g) for w in state.weights]
    if state.momentum is not None:
        state.momentum = [0.05 * torch.randn(m.shape, dtype=dtype, generator=g) for m in state.momentum]
    for t in state.weights + (state.momentum or []):
        t.requires_grad_(True)
    return state


def pieces(q, k, v, rule, *, initial_state, cuts, **gates):
    """``memorize`` (chunked mode) over the pieces of the sequence between ``cuts``, each resuming from the state
    the last one returned: one-token pieces take the direct decoding step, longer ones the chunk grid."""
    outs, state, start = [], initial_state, 0
    for end in [*cuts, q.shape[1]]:
        piece = {name: g[:, start:end] for name, g in gates.items()}
        out, state = memorize(q[:, start:end], k[:, start:end], v[:, start:end], rule, initial_state=state,
                              output_final_state=True, **piece)
        outs.append(out)
        start = end
    return torch.cat(outs, 1), state


def run_both(rule, length, dtype=torch.float64, seed=0, lr_scale=1.0, fast="chunked"):
    """Outputs, final weights and outer gradients (w.r.t. q, k, v, every gate, the initial state) of the recurrent
    path and ``fast``: ``chunked`` (one call) or ``pieces`` (a 5-token prefill, then one token per call)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, gates = random_inputs(rule, B, length, H, D, dtype=dtype, generator=g, requires_grad=True)
    gates["lr"] = (lr_scale * gates["lr"].detach()).requires_grad_()
    state = random_state(rule, dtype, seed)
    leaves = [q, k, v, *gates.values(), *state.weights, *(state.momentum or [])]
    results = {}
    for mode in ("recurrent", fast):
        if mode == "pieces":
            out, final = pieces(q, k, v, rule, initial_state=state, cuts=range(5, length), **gates)
        else:
            out, final = memorize(q, k, v, rule, initial_state=state, output_final_state=True, mode=mode, **gates)
        probe = torch.Generator().manual_seed(seed + 1)
        loss = (out * torch.randn(out.shape, dtype=dtype, generator=probe)).sum()
        for w in final.weights:
            loss = loss + (w * torch.randn(w.shape, dtype=dtype, generator=probe)).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results[mode] = [out.detach(), *[w.detach() for w in final.weights],
                         *[torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, leaves)]]
    return results


def assert_same(results, tol):
    ref_results, fast_results = results.values()
    for i, (ref, fast) in enumerate(zip(ref_results, fast_results)):
        err = relative_error(ref, fast) if ref.abs().max() > 0 else fast.abs().max().item()
        assert err < tol, f"tensor #{i} differs: relative error {err:.2e}"


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
@pytest.mark.parametrize("chunk_size,length", [(1, 7), (3, 11), (16, 21)])
def test_chunked_matches_recurrent_fp64(rule, chunk_size, length):
    assert_same(run_both(with_chunk(rule, chunk_size), length), 1e-9)


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_decoding_token_by_token_matches_recurrent_fp64(rule):
    """A prefill, then the direct one-token step (no chunk grid, no autograd) from every chunk offset (chunk 4:
    prefill pieces end mid-chunk, steps cross chunk boundaries and lag tokens)."""
    assert_same(run_both(with_chunk(rule, 4), 11, fast="pieces"), 1e-9)


TITANS = [MemoryRule(memory="linear", retention="decay", learner="momentum"),
          MemoryRule(memory="mlp", depth=2, expansion=2, retention="decay", learner="momentum")]


@pytest.mark.parametrize("rule", TITANS, ids=rule_id)
def test_chunk_64_on_a_length_that_is_not_a_multiple(rule):
    assert_same(run_both(with_chunk(rule, 64), 70), 1e-9)


ARCHITECTURES = [
    dict(memory="mlp", depth=1), dict(memory="mlp", depth=3, activation="silu"),
    dict(memory="mlp", depth=4, activation="tanh", expansion=1), dict(memory="mlp", residual=False, activation="relu"),
    dict(memory="mlp", layernorm=True), dict(memory="mlp", gated=True),
    dict(memory="linear", feature_map="poly", degree=2), dict(memory="mlp", feature_map="poly", degree=3),
]


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("learner", ["momentum", "muon", "dgd", "dgd-momentum"])
def test_architectures(arch, learner):
    rule = MemoryRule(**arch, learner=learner, chunk_size=3)
    assert_same(run_both(rule, 8), 1e-9)


PROXIMAL = [dict(memory="linear"), dict(memory="mlp"), dict(memory="mlp", depth=3, activation="silu"),
            dict(memory="mlp", gated=True), dict(memory="mlp", layernorm=True), dict(memory="linear", objective="dot")]


@pytest.mark.parametrize("arch", PROXIMAL, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("chunk_size,length", [(1, 7), (3, 11), (16, 21)])
@pytest.mark.parametrize("learner,relaxation", [("dgd", 1.0), ("dgd-momentum", 1.0), ("dgd", 2.0)])
def test_proximal_dgd(arch, chunk_size, length, learner, relaxation):
    """The implicit DGD step, with steps up to 1 so that ``θ‖x‖²`` is far from small."""
    rule = MemoryRule(**arch, learner=learner, proximal=True, relaxation=relaxation, chunk_size=chunk_size)
    assert_same(run_both(rule, length, lr_scale=20.0), 1e-9)


IMPLICIT = [rule for rule in all_rules(proximal=True) if rule.implicit_step]


@pytest.mark.parametrize("rule", IMPLICIT, ids=rule_id)
def test_implicit_step(rule):
    """The implicit step along each token's gradient (``proximal`` with gd / momentum), steps up to 1 so that
    ``θρ`` is far from small, every combination of the catalogue; chunk sizes 1 and 16 for every other one."""
    assert_same(run_both(with_chunk(rule, 3), 11, lr_scale=20.0), 1e-9)


@pytest.mark.parametrize("rule", IMPLICIT[::2], ids=rule_id)
@pytest.mark.parametrize("chunk_size,length", [(1, 7), (16, 21)])
def test_implicit_step_chunk_sizes(rule, chunk_size, length):
    assert_same(run_both(with_chunk(rule, chunk_size), length, lr_scale=20.0), 1e-9)


@pytest.mark.parametrize("rule", IMPLICIT[1::2], ids=rule_id)
def test_implicit_step_decoding_token_by_token(rule):
    assert_same(run_both(with_chunk(rule, 4), 11, fast="pieces", lr_scale=20.0), 1e-9)


@pytest.mark.parametrize("arch", PROXIMAL[1:5], ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("learner", ["gd", "momentum"])
def test_implicit_step_architectures(arch, learner):
    rule = MemoryRule(**arch, learner=learner, proximal=True, relaxation=1.5, chunk_size=3)
    assert_same(run_both(rule, 8, lr_scale=20.0), 1e-9)


INNER_BOUND = [dict(memory="mlp"), dict(memory="mlp", depth=3, activation="silu"), dict(memory="mlp", gated=True)]


@pytest.mark.parametrize("arch", INNER_BOUND, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("chunk_size,length", [(1, 7), (4, 11)])
@pytest.mark.parametrize("learner,proximal,relaxation", [("dgd", True, 2.0), ("dgd-momentum", True, 1.0),
                                                         ("dgd", False, 1.0)])
def test_inner_layer_step_bound(arch, chunk_size, length, learner, proximal, relaxation):
    """``inner_lr_max`` below most steps (up to 1), so the bound is active on most tokens."""
    rule = MemoryRule(**arch, learner=learner, proximal=proximal, relaxation=relaxation, inner_lr_max=0.3,
                      chunk_size=chunk_size)
    assert_same(run_both(rule, length, lr_scale=20.0), 1e-9)


@pytest.mark.parametrize("learner", ["omega", "momentum", "muon"])
@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("window", [2, 4])
def test_omega_window(learner, memory, window):
    rule = MemoryRule(memory=memory, learner=learner, window=window, chunk_size=3)
    assert_same(run_both(rule, 10), 1e-9)


def test_feature_coefficients_receive_gradients():
    rule = MemoryRule(memory="linear", feature_map="poly", degree=2, learner="momentum", chunk_size=3)
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, B, 8, H, D, generator=g)
    coeffs = torch.tensor([[1.0, 1.0, 0.5], [0.9, 0.7, 0.2]], dtype=torch.float64, requires_grad=True)
    grads = {}
    for mode in ("recurrent", "chunked"):
        state = random_state(rule, torch.float64)
        out, _ = memorize(q, k, v, rule, feature_coeffs=coeffs, initial_state=state, mode=mode, **gates)
        grads[mode], = torch.autograd.grad(out.square().sum(), coeffs)
    assert grads["chunked"].abs().min() > 0
    assert relative_error(grads["recurrent"], grads["chunked"]) < 1e-9


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_chunked_matches_recurrent_fp32(rule):
    assert_same(run_both(with_chunk(rule, 5), 12, dtype=torch.float32), 1e-4)


CHANNEL_RULES = [MemoryRule(memory="linear", retention=r, learner=l, window=w, chunk_size=3)
                 for r, l, w in [("decay", "gd", 1), ("decay", "momentum", 1), ("none", "momentum", 1),
                                 ("decay", "omega", 3)]] + \
    [MemoryRule(memory="linear", retention="decay", learner=l, proximal=True, chunk_size=3) for l in ("gd", "momentum")]


@pytest.mark.parametrize("rule", CHANNEL_RULES, ids=rule_id)
def test_channel_wise_gates(rule):
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, B, 10, H, D, generator=g)
    for name in ("lr", "decay", "momentum"):
        if name in gates:
            gates[name] = gates[name].unsqueeze(-1) * (0.5 + torch.rand(B, 10, H, D, generator=g, dtype=torch.float64))
    gates = {name: t.detach().requires_grad_() for name, t in gates.items()}
    state = random_state(rule, torch.float64)
    outs = {}
    for mode in ("recurrent", "chunked"):
        out, final = memorize(q, k, v, rule, initial_state=state, output_final_state=True, mode=mode, **gates)
        grads = torch.autograd.grad(out.square().sum() + final.weights[0].square().sum(), list(gates.values()))
        outs[mode] = [out, final.weights[0], *grads]
    assert_same(outs, 1e-9)


def test_channel_wise_gates_with_equal_channels_equal_scalar_gates():
    rule = MemoryRule(memory="linear", learner="momentum", chunk_size=4)
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, B, 9, H, D, generator=g)
    wide = {n: t.unsqueeze(-1).expand(B, 9, H, D).contiguous() for n, t in gates.items()}
    state = random_state(rule, torch.float64)
    a, _ = memorize(q, k, v, rule, initial_state=state, **gates)
    b, _ = memorize(q, k, v, rule, initial_state=state, **wide)
    assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("rule", [MemoryRule(memory="linear", learner="momentum", chunk_size=3),
                                  MemoryRule(memory="mlp", learner="dgd", chunk_size=2),
                                  MemoryRule(memory="linear", learner="muon", chunk_size=3),
                                  MemoryRule(memory="linear", retention="kl", chunk_size=3),
                                  MemoryRule(memory="mlp", retention="lq", objective="lp", chunk_size=3),
                                  MemoryRule(memory="linear", window=3, learner="omega", chunk_size=2)],
                         ids=rule_id)
def test_gradcheck(rule):
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, 1, 5, 1, 2, generator=g, requires_grad=True)
    state = rule.init_state(1, 1, 2, dtype=torch.float64, generator=g)
    if rule.retention == "kl":
        state.weights = [torch.randn(w.shape, dtype=torch.float64, generator=g) for w in state.weights]
    else:
        state.weights = [w + 0.3 * torch.randn(w.shape, dtype=torch.float64, generator=g) for w in state.weights]
    w0 = state.weights[0].requires_grad_()
    names = list(gates)

    def f(q, k, v, w0, *gate_values):
        state.weights = [w0, *state.weights[1:]]
        out, final = memorize(q, k, v, rule, initial_state=state, output_final_state=True,
                              **dict(zip(names, gate_values)))
        return out, final.weights[0]

    assert torch.autograd.gradcheck(f, (q, k, v, w0, *gates.values()))
