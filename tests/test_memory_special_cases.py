"""The special cases of SPEC §10.1, each against an independent reference written here."""

import torch
from torch.func import grad

from nestedmemory.cli import relative_error
from nestedmemory.memory import MemoryRule, memorize
from nestedmemory.memory.maps import memory_of
from nestedmemory.memory.nets import activation

B, T, H, D = 2, 9, 2, 4
DT = torch.float64


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=DT, generator=g), dim=-1)


def uniform(lo, hi, seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(*(shape or (B, T, H)), dtype=DT, generator=g)


q, k, v = unit(B, T, H, D, seed=1), unit(B, T, H, D, seed=2), unit(B, T, H, D, seed=3)


def loop(update, w0, read=lambda w, qt: qt @ w):
    """Reference recurrence over ``[B, H]`` matrices ``w`` (row convention, ``o_t = q_t W_t``)."""
    w, outs = w0.clone(), []
    for t in range(T):
        w = update(w, t)
        outs.append(read(w, q[:, t].unsqueeze(-2)).squeeze(-2))
    return torch.stack(outs, 1), w


def row(x, t):
    return x[:, t].unsqueeze(-2)            # [B, H, 1, D]


def col(x, t):
    return x[:, t].unsqueeze(-1)            # [B, H, D, 1]


def gate(x, t):
    return x[:, t][..., None, None]         # [B, H, 1, 1]


def test_dot_matrix_no_decay_is_linear_attention():
    rule = MemoryRule(memory="linear", objective="dot", retention="none", learner="gd", chunk_size=4)
    out, _ = memorize(q, k, v, rule, lr=1.0)
    scores = torch.einsum("bthd,bshd->bhts", q, k).tril()
    reference = torch.einsum("bhts,bshd->bthd", scores, v)
    assert relative_error(reference, out) < 1e-12


def test_titans_linear_without_momentum_at_chunk_1_is_gated_deltanet():
    """Gated DeltaNet ``S_t = a_t (I − b_t k kᵀ) S_{t−1} + b_t kᵀ v`` equals Titans' ``(1−α) W − θ kᵀ(k W − v)``
    with ``α = 1 − a``, ``θ = a b`` and values ``v / a`` (Titans App. C)."""
    a, b = uniform(0.8, 1.0, 4), uniform(0.1, 0.9, 5)
    ref, ref_state = loop(lambda s, t: gate(a, t) * (s - gate(b, t) * col(k, t) @ (row(k, t) @ s))
                          + gate(b, t) * col(k, t) @ row(v, t), torch.zeros(B, H, D, D, dtype=DT))
    rule = MemoryRule(memory="linear", objective="l2", retention="decay", learner="gd", chunk_size=1)
    out, state = memorize(q, k, v / a.unsqueeze(-1), rule, lr=a * b, decay=1 - a, output_final_state=True)
    assert relative_error(ref, out) < 1e-12
    assert relative_error(ref_state, state.weights[0]) < 1e-12


def test_omega_with_window_1_is_the_delta_rule():
    beta = uniform(0.1, 0.9, 6)
    ref, _ = loop(lambda s, t: s - gate(beta, t) * col(k, t) @ (row(k, t) @ s - row(v, t)),
                  torch.zeros(B, H, D, D, dtype=DT))
    rule = MemoryRule(memory="linear", objective="l2", retention="none", learner="omega", window=1, chunk_size=1)
    out, _ = memorize(q, k, v, rule, lr=beta)
    assert relative_error(ref, out) < 1e-12


def test_omega_window_matches_the_sliding_window_objective():
    """Atlas Eq. 11: ``W_t = W − θ_t Σ_{i=t−c+1}^{t} γ_{t,t−i} k_iᵀ (k_i W − v_i)``."""
    c, theta = 3, uniform(0.1, 0.5, 7)
    gamma = uniform(0.0, 1.0, 8, B, T, H, c)

    def update(s, t):
        surprise = sum(gamma[:, t, :, r][..., None, None] * col(k, t - r) @ (row(k, t - r) @ s - row(v, t - r))
                       for r in range(c) if t - r >= 0)
        return s - gate(theta, t) * surprise

    w0 = unit(B, H, D, D, seed=9)
    ref, _ = loop(update, w0)
    rule = MemoryRule(memory="linear", retention="none", learner="omega", window=c, chunk_size=1)
    out, _ = memorize(q, k, v, rule, lr=theta, window_gates=gamma, initial_state=rule_state(rule, w0))
    assert relative_error(ref, out) < 1e-12


def rule_state(rule, *weights):
    state = rule.init_state(B, H, D, dtype=DT)
    state.weights = list(weights)
    return state


def test_moneta_with_p_2_q_2_is_decayed_l2_gd():
    """``ℓ_2`` with p = 2 has gradient ``2 e``; with q = 2 the L_q map is the identity (online rule, chunk 1)."""
    lr, decay = uniform(0.0, 0.1, 10), uniform(0.0, 0.2, 11)
    for memory in ("linear", "mlp"):
        moneta = MemoryRule(memory=memory, objective="lp", p=2, retention="lq", q=2, learner="gd", chunk_size=1)
        titans = MemoryRule(memory=memory, objective="l2", retention="decay", learner="gd", chunk_size=1)
        state = moneta.init_state(B, H, D, dtype=DT, generator=torch.Generator().manual_seed(0))
        state.weights = [w + 0.1 for w in state.weights]
        a, _ = memorize(q, k, v, moneta, lr=lr, decay=decay, initial_state=state)
        b, _ = memorize(q, k, v, titans, lr=2 * lr, decay=decay, initial_state=state)
        assert relative_error(b, a) < 1e-12


def test_memora_with_no_decay_and_no_lr_is_the_identity():
    """Memora's state is logits ``Z`` (memory ``c · softmax(Z)``); with α = θ = 0 it reads like the fixed memory."""
    rule = MemoryRule(memory="mlp", retention="kl", learner="gd", chunk_size=4)
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(B, H, i, o, dtype=DT, generator=g) for i, o in rule.weight_shapes(D)]
    w = memory_of(rule, z)
    assert all(relative_error(x.sum(-1), torch.full_like(x[..., 0], x.shape[-1])) < 1e-12 for x in w)  # c = n
    out, state = memorize(q, k, v, rule, lr=0.0, decay=0.0, initial_state=rule_state(rule, *z),
                          output_final_state=True)
    fixed, _ = memorize(q, k, v, MemoryRule(memory="mlp", retention="none", chunk_size=4), lr=0.0,
                        initial_state=rule_state(rule, *w))
    assert relative_error(fixed, out) < 1e-12
    for before, after in zip(w, state.weights):  # T = 9 ends one token into a chunk: the memory as read
        assert relative_error(before, after) < 1e-12


@torch.no_grad()
def test_memora_gradients_stay_finite_when_its_rows_saturate():
    """A key repeated with a value out of the memory's reach pushes the same logits every chunk until the
    row-stochastic memory's entries underflow to 0 (fp32: after a logit gap of ~104). Its retention acts on
    ``log W``: the state is kept as logits, so no ``log 0`` (whose backward is 0 · inf) is ever taken."""
    rule = MemoryRule(memory="linear", retention="kl", learner="gd", chunk_size=2)
    key = torch.nn.functional.normalize(torch.ones(1, 256, 1, 4), dim=-1).requires_grad_()
    value = torch.zeros(1, 256, 1, 4)
    value[..., 0] = 10.0
    value.requires_grad_()
    lr = torch.full((1, 256, 1), 1.0, requires_grad=True)
    with torch.enable_grad():
        out, state = memorize(key, key, value, rule, lr=lr, decay=0.0, output_final_state=True)
        memory = memory_of(rule, state.weights)
        assert (memory[0] == 0).any(), "the memory's rows did not saturate"
        grads = torch.autograd.grad(out.sum(), (key, value, lr))
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in grads)


def ttt_reference(f, w0, lr, chunk):
    """TTT's mini-batch GD (Sun et al. 2024): within a mini-batch every gradient is taken at its start,
    ``W_t = W_{t−1} − θ_t ∇_W ½‖f(k_t; W_{t'}) − v_t‖²`` and ``o_t = f(q_t; W_t)``; per (batch, head)."""
    def loss(w, kt, vt):
        return 0.5 * ((f(w, kt) - vt) ** 2).sum()

    outs = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            w = [x[b, h] for x in w0]
            for t in range(T):
                if t % chunk == 0:
                    anchor = w
                g = grad(loss)(anchor, k[b, t, h], v[b, t, h])
                w = [wi - lr[b, t, h] * gi for wi, gi in zip(w, g)]
                outs[b, t, h] = f(w, q[b, t, h])
    return outs


def test_ttt_linear_and_ttt_mlp_are_rule_instances():
    lr = uniform(0.0, 0.3, 12)
    linear = MemoryRule(memory="linear", objective="l2", retention="none", learner="gd", chunk_size=4)
    w0 = [unit(B, H, D, D, seed=13)]
    out, _ = memorize(q, k, v, linear, lr=lr, initial_state=rule_state(linear, *w0))
    assert relative_error(ttt_reference(lambda w, x: x @ w[0], w0, lr, 4), out) < 1e-10

    mlp = MemoryRule(memory="mlp", depth=2, expansion=4, layernorm=True, residual=True, objective="l2",
                     retention="none", learner="gd", chunk_size=4)
    w0 = [0.5 * unit(B, H, i, o, seed=14 + i) for i, o in mlp.weight_shapes(D)]

    def ttt_mlp(w, x):
        z = activation("gelu", x @ w[0]) @ w[1]
        return x + torch.nn.functional.layer_norm(z, z.shape[-1:], eps=1e-5)

    out, _ = memorize(q, k, v, mlp, lr=lr, initial_state=rule_state(mlp, *w0))
    assert relative_error(ttt_reference(ttt_mlp, w0, lr, 4), out) < 1e-10


def test_dgd_with_dot_bias_is_gated_deltanet_at_every_chunk_size():
    """Hope's DGD with the dot-product bias, ``W_t = (a I − θ kkᵀ) W_{t−1} + θ kᵀv``, is Gated DeltaNet
    ``a (I − b kkᵀ) S + b kᵀ v`` (θ = a b, values v / a) exactly — its chunked path is the UT/WY form, so it holds
    for every chunk size (DeltaNet is a = 1)."""
    a, b = uniform(0.8, 1.0, 15), uniform(0.1, 0.9, 16)
    w0 = unit(B, H, D, D, seed=17)
    ref, ref_state = loop(lambda s, t: gate(a, t) * (s - gate(b, t) * col(k, t) @ (row(k, t) @ s))
                          + gate(b, t) * col(k, t) @ row(v, t), w0)
    for chunk in (1, 3, 5, 16):
        rule = MemoryRule(memory="linear", objective="dot", retention="decay", learner="dgd", chunk_size=chunk)
        out, state = memorize(q, k, v / a.unsqueeze(-1), rule, lr=a * b, decay=1 - a,
                              initial_state=rule_state(rule, w0), output_final_state=True)
        assert relative_error(ref, out) < 1e-12
        assert relative_error(ref_state, state.weights[0]) < 1e-12


def test_proximal_dgd_is_the_implicit_delta_rule():
    """Proximal DGD with the dot bias and no retention is the implicit (Longhorn-style) delta rule
    ``W_t = argmin_W ½‖kW − v‖² + ‖W − W_{t−1}‖² / 2θ``, solved here by a dense solve, exact at every chunk size —
    with keys of norm 3 and steps up to 2, where the explicit rule (eigenvalue ``1 − θ‖k‖² < −1``) explodes."""
    big_k, theta = 3 * k, uniform(0.5, 2.0, 20)
    w0 = unit(B, H, D, D, seed=21)
    eye = torch.eye(D, dtype=DT)
    ref, ref_state = loop(lambda s, t: torch.linalg.solve(eye / gate(theta, t) + col(big_k, t) @ row(big_k, t),
                                                          s / gate(theta, t) + col(big_k, t) @ row(v, t)), w0)
    for chunk in (1, 4, 16):
        rule = MemoryRule(memory="linear", objective="dot", retention="none", learner="dgd", proximal=True,
                          chunk_size=chunk)
        out, state = memorize(q, big_k, v, rule, lr=theta, initial_state=rule_state(rule, w0),
                              output_final_state=True)
        assert relative_error(ref, out) < 1e-12
        assert relative_error(ref_state, state.weights[0]) < 1e-12
    explicit = MemoryRule(memory="linear", objective="dot", retention="none", learner="dgd", chunk_size=4)
    out, _ = memorize(q, big_k, v, explicit, lr=theta, initial_state=rule_state(explicit, w0))
    assert out.abs().max() > 1e3 * ref.abs().max()


def test_implicit_gd_step_on_a_matrix_memory_is_the_implicit_delta_rule():
    """``proximal`` gd with the ℓ2 bias, no retention and chunk 1 takes ``θ / (1 + θ‖k‖²)`` along the token's
    gradient (``ρ = ‖k‖²`` for a matrix memory): the same implicit delta rule as proximal DGD with the dot bias
    (Longhorn's step), exact with keys of norm 3 and steps up to 2."""
    big_k, theta = 3 * k, uniform(0.5, 2.0, 20)
    w0 = unit(B, H, D, D, seed=21)
    eye = torch.eye(D, dtype=DT)
    ref, ref_state = loop(lambda s, t: torch.linalg.solve(eye / gate(theta, t) + col(big_k, t) @ row(big_k, t),
                                                          s / gate(theta, t) + col(big_k, t) @ row(v, t)), w0)
    rule = MemoryRule(memory="linear", objective="l2", retention="none", learner="gd", proximal=True, chunk_size=1)
    out, state = memorize(q, big_k, v, rule, lr=theta, initial_state=rule_state(rule, w0), output_final_state=True)
    assert relative_error(ref, out) < 1e-12
    assert relative_error(ref_state, state.weights[0]) < 1e-12


def test_over_relaxed_proximal_dgd_reflects():
    """With ``relaxation=2`` and a large step the DGD transition along a unit key tends to the reflection
    ``I − 2kkᵀ`` (eigenvalue −1); at ``relaxation=1`` to the projection ``I − kkᵀ`` (eigenvalue 0)."""
    w0 = unit(B, H, D, D, seed=22)
    theta = torch.full((B, T, H), 1e8, dtype=DT)
    for relaxation, factor in ((2.0, 2.0), (1.0, 1.0)):
        ref, _ = loop(lambda s, t: s - factor * col(k, t) @ (row(k, t) @ s), w0)
        rule = MemoryRule(memory="linear", objective="dot", retention="none", learner="dgd", proximal=True,
                          relaxation=relaxation, chunk_size=4)
        out, _ = memorize(q, k, torch.zeros_like(v), rule, lr=theta, initial_state=rule_state(rule, w0))
        assert relative_error(ref, out) < 1e-6


def test_inner_layer_step_bound_leaves_the_output_layer_alone():
    """``inner_lr_max`` bounds the step of the layers before the output layer only: a bound above every step changes
    nothing, a vanishing bound freezes the inner layer while the output layer learns as without it."""
    theta = uniform(2.0, 5.0, 23)
    shapes = MemoryRule(memory="mlp", learner="dgd").weight_shapes(D)
    w0 = [unit(B, H, *shape, seed=24 + i) for i, shape in enumerate(shapes)]

    def final(**options):
        rule = MemoryRule(memory="mlp", learner="dgd", proximal=True, relaxation=2.0, chunk_size=4, **options)
        out, state = memorize(q, k, v, rule, lr=theta, decay=torch.zeros_like(theta),
                              initial_state=rule_state(rule, *w0), output_final_state=True)
        return out, state.weights

    out, weights = final()
    same_out, same_weights = final(inner_lr_max=10.0)
    assert relative_error(out, same_out) < 1e-12
    assert all(relative_error(a, b) < 1e-12 for a, b in zip(weights, same_weights))
    _, frozen = final(inner_lr_max=1e-12)
    assert relative_error(w0[0], frozen[0]) < 1e-9
    assert relative_error(w0[1], frozen[1]) > 1e-2


def test_dot_bias_with_decay_is_mamba2_ssd_at_every_chunk_size():
    """Mamba2's SSD, ``h_t = exp(Δ_t A) h_{t−1} + Δ_t B_tᵀ x_t``, ``y_t = C_t h_t``: the dot bias with decay
    ``1 − exp(Δ_t A)``, lr Δ_t, keys B, values x, queries C; its gradient does not depend on the memory, so every
    chunk size is exact."""
    dt, big_a = uniform(0.01, 0.5, 18), -uniform(0.5, 2.0, 19, H)
    decay = 1 - torch.exp(dt * big_a)
    ref, _ = loop(lambda s, t: gate(1 - decay, t) * s + gate(dt, t) * col(k, t) @ row(v, t),
                  torch.zeros(B, H, D, D, dtype=DT))
    for chunk in (1, 4, 16):
        rule = MemoryRule(memory="linear", objective="dot", retention="decay", learner="gd", chunk_size=chunk)
        out, _ = memorize(q, k, v, rule, lr=dt, decay=decay)
        assert relative_error(ref, out) < 1e-12
