"""Memory Caching (issue 14; SPEC §9): the segment-wise layer against a literal token-by-token reference (the
recurrent rule, an explicit list of cached states, per-token pools and softmax), causality, decoding, the paper's
special cases and the option checks."""

import math

import pytest
import torch
from checks import assert_causal, decode, frozen

from nestedmemory.layers import MemoryMixer
from nestedmemory.layers.caching import caching_options
from nestedmemory.memory import MemoryRule, MemoryState, memorize, recall
from nestedmemory.memory.catalog import all_rules, random_inputs
from nestedmemory.memory.maps import memory_of
from nestedmemory.models import from_preset, preset_config

DIM, HEADS, CHUNK, SEGMENT = 16, 2, 4, 8
LINEAR = dict(memory="linear", objective="dot", retention="none", learner="gd")
RULES = {
    "linear": dict(LINEAR),
    "titans-mlp": dict(memory="mlp", depth=2, expansion=2, objective="l2", retention="decay", learner="momentum"),
    "yaad-mlp": dict(memory="mlp", depth=2, expansion=2, layernorm=True, objective="huber", retention="decay",
                     learner="gd"),
}


def layer(rule: str, seed: int = 0, **caching) -> MemoryMixer:
    torch.manual_seed(seed)
    mixer = MemoryMixer(DIM, HEADS, rule=MemoryRule(**RULES[rule], chunk_size=CHUNK),
                        caching=dict(dict(segment=SEGMENT), **caching))
    torch.manual_seed(seed + 1)  # the same perturbation whatever the caching adds (its parameters come last)
    for p in mixer.parameters():  # random, non-zero everything (gate inits are constants)
        p.data.add_(0.1 * torch.randn_like(p))
    return mixer.double()


def inputs(mixer: MemoryMixer, length: int, seed: int = 1):
    """The layer's ``(q, k, v, x)`` for a random input, as leaves."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, DIM, generator=g, dtype=torch.float64)
    shape = (2, length, HEADS, mixer.head_dim)
    q, k = (torch.nn.functional.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (q, k, v, x)]


def frozen_read(rule, state, q, gates):
    """``M(q)`` of ``state`` without a write, token by token (the recurrent rule with zero steps)."""
    return memorize(q, q, torch.zeros_like(q), rule, initial_state=state, mode="recurrent", **frozen(gates))[0]


def literal(mixer: MemoryMixer, q, k, v, x):
    """Eq. 4–17 token by token: the online memory (recurrent rule), the cached states as a list, pools as means of
    explicit token ranges, the softmax (and SSC's top-k) over explicit lists of scores."""
    opts, rule = mixer.caching.options, mixer.rule
    gates = mixer.gates(x)
    if opts.aggregation == "residual":
        u = p = None
    elif opts.pool == "mean":
        u, p = mixer.caching.u_proj(x).unsqueeze(2), x.unsqueeze(2)
    else:
        u = q if opts.gate_input == "q" else mixer.caching.u_proj(x).unflatten(-1, (HEADS, mixer.head_dim))
        p = k
    pool = (lambda tokens: tokens.mean(1)) if opts.pool == "mean" else (lambda tokens: tokens.sum(1))  # Eq. 10 / 16
    def span(lo, hi):
        return {n: g if n in ("feature_coeffs", "feature_scale") else g[:, lo:hi] for n, g in gates.items()}

    def fenwick(s):
        """Segment s's Fenwick nodes: for each set bit j, segments [(s >> j) − 1, s >> j) · 2^j compressed from the
        initial state (token by token), with their pools."""
        nodes = []
        for j in range(s.bit_length()):
            if s >> j & 1:
                lo, hi = (((s >> j) - 1) << j) * opts.segment, ((s >> j) << j) * opts.segment
                _, state = memorize(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], rule, initial_state=mixer.initial_state(),
                                    output_final_state=True, mode="recurrent", **span(lo, hi))
                nodes.append((state, None if p is None else pool(p[:, lo:hi])))
        return nodes

    online, cached, pools, outs = mixer.initial_state(), [], [], []
    for t in range(q.shape[1]):
        segment, position = divmod(t, opts.segment)
        if position == 0 and t > 0:
            cached.append(online)
            pools.append(None if p is None else pool(p[:, t - opts.segment:t]))
            if opts.init == "independent" or opts.segmentation == "log":
                online = mixer.initial_state()
            if opts.segmentation == "log":
                cached, pools = (list(x) for x in zip(*fenwick(segment))) if segment else ([], [])
        token = span(t, t + 1)
        y, online = memorize(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], rule, initial_state=online,
                             output_final_state=True, mode="recurrent", **token)
        reads = [frozen_read(rule, state, q[:, t:t + 1], token) for state in cached]
        if opts.aggregation == "residual":
            outs.append(y + sum(reads) if reads else y)
            continue
        scores = [(u[:, t] * pool).sum(-1) for pool in pools]                      # [B, G] each
        current = (u[:, t] * pool(p[:, segment * opts.segment:t + 1])).sum(-1)
        if opts.aggregation == "sparse" and len(scores) > opts.top_k:
            kth = torch.stack(scores).sort(0, descending=True).values[opts.top_k - 1]
            scores = [torch.where(s >= kth, s, torch.full_like(s, -math.inf)) for s in scores]
        gamma = torch.softmax(torch.stack(scores + [current]), 0)                   # [N + 1, B, G]
        if opts.aggregation == "soup":  # Eq. 14–15: read the γ-weighted sum of the memories' parameters
            weights = [gamma[-1].view(*gamma.shape[1:], 1, 1) * w for w in
                       (memory_of(rule, online.weights) if online.offset == 0 else online.weights)]
            for g, state in zip(gamma[:-1], cached):
                weights = [a + g.view(*g.shape, 1, 1) * b for a, b in zip(weights, memory_of(rule, state.weights))]
            outs.append(recall(q[:, t:t + 1], rule, MemoryState(weights=weights, offset=1)))  # the weights as read
            continue
        y = gamma[-1].unsqueeze(1).unsqueeze(-1) * y
        for g, r in zip(gamma[:-1], reads):
            y = y + g.unsqueeze(1).unsqueeze(-1) * r
        outs.append(y)
    return torch.cat(outs, 1), online, cached


def chunked(mixer, q, k, v, x):
    out, entry = mixer.mix(q, k, v, x, None, True)
    return out, entry


CASES = [(rule, dict(aggregation=a, init=i)) for rule in RULES for a in ("residual", "gated", "sparse")
         for i in ("checkpoint", "independent")]
CASES += [("linear", dict(aggregation="soup")), ("titans-mlp", dict(aggregation="soup")),
          ("yaad-mlp", dict(aggregation="soup", init="independent", pool="keys")), ("titans-mlp", dict(aggregation="gated", pool="keys")),
          ("linear", dict(aggregation="sparse", pool="keys", gate_input="q", top_k=1)),
          ("yaad-mlp", dict(aggregation="gated", segment=12))]
CASES += [(rule, dict(aggregation=a, segmentation="log", init="independent", segment=4)) for rule in RULES
          for a in ("residual", "gated", "sparse", "soup")]


@pytest.mark.parametrize("rule,options", CASES, ids=[f"{r}-{'-'.join(map(str, o.values()))}" for r, o in CASES])
@pytest.mark.parametrize("length", [29, 32])
def test_segment_wise_equals_literal_reference(rule, options, length):
    """Outputs, the online and cached states and every gradient (inputs and parameters), fp64, lengths on and off
    the segment grid."""
    mixer = layer(rule, **options)
    q, k, v, x = inputs(mixer, length)
    out, entry = chunked(mixer, q, k, v, x)
    ref, online, cached = literal(mixer, q, k, v, x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    opts = mixer.caching.options
    states = [*cached, online] if length % opts.segment == 0 else cached  # the layer caches a segment as it ends
    finished = [entry["memory"]] if length % opts.segment else []  # the online memory, unless it just restarted
    expected = [online] if length % opts.segment else []
    if opts.segmentation == "constant":
        assert len(entry["ledger"].states) == len(states) == length // opts.segment
        finished, expected = finished + entry["ledger"].states, expected + states
    for a, b in zip(finished, expected):
        for wa, wb in zip(a.weights, b.weights):
            torch.testing.assert_close(wa, wb, rtol=1e-9, atol=1e-10)
    weights = torch.randn_like(out)
    leaves = [q, k, v, x, *mixer.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True)
    refs = torch.autograd.grad((ref * weights).sum(), leaves, allow_unused=True)
    for name, g, r in zip(["q", "k", "v", "x", *(n for n, _ in mixer.named_parameters())], grads, refs):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("aggregation", ["residual", "gated", "sparse", "soup", "log"])
def test_causal_including_the_current_segment_gate(aggregation):
    """Changing token t + 1 (inside the same segment as t, which the online gate pools) changes nothing at ≤ t."""
    options = {"sparse": dict(top_k=1), "log": dict(aggregation="gated", segmentation="log", segment=4)}
    mixer = layer("titans-mlp", **dict(dict(aggregation=aggregation), **options.get(aggregation, {})))
    x = torch.randn(1, 30, DIM, dtype=torch.float64)
    for t in (5, 12, 21):
        assert_causal(mixer, x, t + 1)


@pytest.mark.parametrize("aggregation,init", [("gated", "checkpoint"), ("sparse", "independent"),
                                              ("residual", "independent"), ("soup", "checkpoint"), ("gated", "log")])
def test_decoding_equals_the_full_pass(aggregation, init):
    """Prefill of a length off the segment grid, then one token at a time, then a piece across a segment boundary,
    through the model."""
    caching = dict(aggregation=aggregation, **(dict(segmentation="log", segment=8) if init == "log"
                                               else dict(segment=16, init=init)))
    memory = dict(preset_config("titans-lmm").memory, caching=caching)
    model = from_preset("titans-lmm", memory=memory).double().eval()
    x = torch.randint(0, 256, (2, 61))
    with torch.no_grad():
        logits, _ = decode(model, x, [21] + [1] * 20 + [20])
        torch.testing.assert_close(logits, model(input_ids=x).logits, rtol=1e-10, atol=1e-10)


def test_one_segment_is_the_base_layer():
    """A segment as long as the sequence caches nothing: the base memory layer's output."""
    cached = layer("yaad-mlp", aggregation="gated", segment=32)
    torch.manual_seed(0)
    plain = MemoryMixer(DIM, HEADS, rule=cached.rule).double()
    plain.load_state_dict({n: p for n, p in cached.state_dict().items() if not n.startswith("caching.")})
    x = torch.randn(2, 29, DIM, dtype=torch.float64)
    torch.testing.assert_close(cached(x)[0], plain(x)[0], rtol=0, atol=0)


def test_residual_memory_of_independent_linear_compressors_is_linear_attention():
    """RM, linear memory, no retention, independent segments from the zero state: ``Σ_i M^(i) + M_t = Σ_{j≤t} θ_j
    v_j k_jᵀ`` (Eq. 13), the base memory's read."""
    mixer = layer("linear", aggregation="residual", init="independent")
    for w in mixer.initial:
        w.data.zero_()
    q, k, v, x = inputs(mixer, 29)
    out, _ = chunked(mixer, q, k, v, x)
    gates = mixer.gates(x)
    base, _ = memorize(q, k, v, mixer.rule, initial_state=mixer.initial_state(), **gates)
    torch.testing.assert_close(out, base, rtol=1e-10, atol=1e-12)


def test_residual_memory_of_checkpointed_linear_memory_reweights_the_past():
    """RM with checkpoints (and no retention) is one fixed-size read that weighs token j by ``1 + s − σ(j)`` for a
    query in segment s (each later cached prefix state holds it again): Eq. 13's collapse, not the base."""
    mixer = layer("linear", aggregation="residual", init="checkpoint")
    for w in mixer.initial:
        w.data.zero_()
    q, k, v, x = inputs(mixer, 29)
    out, _ = chunked(mixer, q, k, v, x)
    lr = mixer.gates(x)["lr"]                     # [B, T, H]
    seg = torch.arange(29) // SEGMENT
    weight = (1 + seg.view(-1, 1) - seg.view(1, -1)).clamp(min=1) * (seg.view(1, -1) <= seg.view(-1, 1))
    weight = weight * torch.ones(29, 29).tril()
    expected = torch.einsum("tj,bjh,bthd,bjhd,bjhe->bthe", weight.double(), lr, q, k, v)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


def test_gates_without_context_average_the_memories():
    """GRM with ``W_u = 0``: γ uniform over the ``s + 1`` memories, so the output is RM's over ``s + 1``."""
    gated, residual = layer("titans-mlp", aggregation="gated"), layer("titans-mlp", aggregation="residual")
    gated.caching.u_proj.weight.data.zero_()
    q, k, v, x = inputs(gated, 29)
    count = 1 + torch.arange(29, dtype=torch.float64) // SEGMENT
    torch.testing.assert_close(chunked(gated, q, k, v, x)[0],
                               chunked(residual, q, k, v, x)[0] / count.view(1, -1, 1, 1))


def test_soup_is_grm_for_a_matrix_memory_only_and_ssc_with_every_segment_is_grm():
    """Soup reads the interpolated parameters, GRM interpolates the reads: the same for a matrix memory (Eq. 13),
    different for an MLP memory (MC §3.3)."""
    q, k, v, x = inputs(layer("linear", aggregation="gated"), 29)
    grm = chunked(layer("linear", aggregation="gated"), q, k, v, x)[0]
    torch.testing.assert_close(chunked(layer("linear", aggregation="soup"), q, k, v, x)[0], grm)
    torch.testing.assert_close(chunked(layer("linear", aggregation="sparse", top_k=3), q, k, v, x)[0], grm)
    grm, soup = (chunked(layer("titans-mlp", aggregation=a), q, k, v, x)[0] for a in ("gated", "soup"))
    torch.testing.assert_close(grm[:, :SEGMENT], soup[:, :SEGMENT])  # nothing cached yet: both the online read
    assert (grm[:, SEGMENT:] - soup[:, SEGMENT:]).abs().max() > 1e-3


@pytest.mark.parametrize("caching,field", [
    (dict(aggregation="max"), "aggregation"), (dict(segmentation="tree"), "segmentation"),
    (dict(segmentation="log", init="checkpoint"), "init"),
    (dict(init="zero"), "init"), (dict(aggregation="sparse", top_k=0), "top_k"),
    (dict(aggregation="gated", top_k=2), "top_k"), (dict(segment=6), "segment"), (dict(segment=0), "segment"),
    (dict(gate_input="q"), "gate_input"), (dict(pool="max"), "pool"), (dict(window=3), "window")])
def test_bad_options_fail_at_construction_naming_the_field(caching, field):
    rule = MemoryRule(**RULES["titans-mlp"], chunk_size=CHUNK)
    with pytest.raises(ValueError, match=field):
        caching_options(caching, rule)
    memory = dict(preset_config("titans-lmm").memory, caching=caching)
    with pytest.raises(ValueError, match=field):
        from_preset("titans-lmm", memory=memory)


def test_a_cached_titans_learns():
    """Loss falls on the embedded corpus with GRM caching (segments of 16 over 64-token batches)."""
    from nestedmemory.data import shakespeare
    torch.manual_seed(0)
    memory = dict(preset_config("titans-lmm").memory, caching=dict(segment=16))
    model = from_preset("titans-lmm", memory=memory)
    data = torch.tensor(list(shakespeare(50_000).encode()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        starts = torch.randint(0, len(data) - 65, (4,))
        batch = torch.stack([data[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


RECALL_RULES = [*(r for r in all_rules() if r.retention != "elastic"), MemoryRule(memory="mlp", feature_map="poly", objective="l2", retention="decay",
                                          learner="muon", layernorm=True, chunk_size=4),
                MemoryRule(memory="mlp", gated=True, objective="l2", retention="decay", learner="gd", chunk_size=4),
                MemoryRule(memory="linear", feature_map="exp", objective="l2", retention="none", learner="gd",
                           chunk_size=4)]


@pytest.mark.parametrize("rule", RECALL_RULES, ids=lambda r: f"{r.memory}-{r.objective}-{r.retention}-{r.learner}"
                         f"-{r.feature_map}")
def test_recall_is_the_frozen_read_of_every_rule(rule):
    """``memory.recall`` (the cached reads) equals ``memorize``'s read with zero lr, decay and momentum, for every
    rule's chunk-boundary state (Moneta's accumulator and Memora's logits included), and reads a stack of states.
    (``elastic`` is left out: its soft threshold shrinks the memory even with zero steps, so that call is no read.)"""
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, 2, 12, 2, 4, generator=g)
    states = [memorize(q[:, :n], k[:, :n], v[:, :n], rule, output_final_state=True,
                       **{name: x[:, :n] for name, x in gates.items()})[1] for n in (4, 8)]
    stack = None if rule.feature_map == "exp" else \
        MemoryState(weights=[torch.stack(w) for w in zip(*(s.weights for s in states))])
    for n, state in enumerate(states):
        read = memorize(q, k, v, rule, initial_state=state, **frozen(gates))[0]
        torch.testing.assert_close(recall(q, rule, state), read, rtol=1e-12, atol=1e-12)
        if stack is not None:
            torch.testing.assert_close(recall(q, rule, stack)[n], read, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", [r for r in RECALL_RULES if r.feature_map != "exp"],
                         ids=lambda r: f"{r.memory}-{r.objective}-{r.retention}-{r.learner}-{r.feature_map}")
def test_soup_read_chunked_equals_token_by_token(rule):
    """``memorize``'s ``soup`` (the read of ``γ_t W_t + Σ_n γ_{t,n} W^(n)``) in the chunk-parallel path equals the
    literal token-by-token one for every rule (each learner's dual form), outputs and gradients, off the chunk grid."""
    g = torch.Generator().manual_seed(0)
    q, k, v, gates = random_inputs(rule, 2, 11, 2, 4, generator=g)
    states = [memorize(q[:, :n], k[:, :n], v[:, :n], rule, output_final_state=True,
                       **{name: x[:, :n] for name, x in gates.items()})[1] for n in (4, 8)]
    cached = MemoryState(weights=[torch.stack(w).requires_grad_() for w in zip(*(s.weights for s in states))])
    gamma = torch.softmax(torch.randn(3, 2, 11, 2, dtype=torch.float64, generator=g), 0).requires_grad_()
    soup = (gamma[-1], cached, gamma[:-1])
    a = memorize(q, k, v, rule, soup=soup, **gates)[0]
    b = memorize(q, k, v, rule, soup=soup, mode="recurrent", **gates)[0]
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(a)
    leaves = [gamma, *cached.weights]
    for ga, gb in zip(torch.autograd.grad((a * w).sum(), leaves), torch.autograd.grad((b * w).sum(), leaves)):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-11)


def test_post_training_caching_decodes_with_the_mean_of_the_memories():
    """A model trained without caching (MC §3.4): ``enable_caching`` makes every memory layer cache every 16 tokens
    and read the plain average of the online and cached memories — no new weights, the first segment unchanged,
    decoding equal to the full pass; at the layer, the average is RM's output over ``s + 1``."""
    from nestedmemory.layers.caching import enable_caching

    torch.manual_seed(0)
    model = from_preset("titans-lmm").double().eval()
    x = torch.randint(0, 256, (1, 50))
    with torch.no_grad():
        before = model(input_ids=x).logits
        parameters = sum(p.numel() for p in model.parameters())
        assert enable_caching(model, segment=16) == 2
        after = model(input_ids=x).logits
        assert sum(p.numel() for p in model.parameters()) == parameters
        torch.testing.assert_close(after[:, :16], before[:, :16], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(after[:, 16:], before[:, 16:])
        torch.testing.assert_close(decode(model, x, [20] + [1] * 30)[0], after, rtol=1e-10, atol=1e-10)
    mean, residual = layer("titans-mlp", aggregation="mean"), layer("titans-mlp", aggregation="residual")
    q, k, v, x = inputs(mean, 29)
    count = 1 + torch.arange(29, dtype=torch.float64) // SEGMENT
    torch.testing.assert_close(chunked(mean, q, k, v, x)[0], chunked(residual, q, k, v, x)[0] / count.view(1, -1, 1, 1))
    with pytest.raises(ValueError, match="weights to learn"):
        enable_caching(from_preset("titans-lmm"), aggregation="gated")


@pytest.mark.parametrize("caching", [dict(aggregation="gated"), dict(aggregation="gated", segmentation="log")],
                         ids=["grm", "log"])
@torch.no_grad()
def test_beam_search_reorders_the_cached_states(caching):
    """Beam search crosses several segments: the cache's ledger (cached states, Fenwick nodes and compressors)
    is reordered with the beams, so cached and uncached beam search agree."""
    memory = dict(preset_config("titans-lmm").memory, caching=dict(caching, segment=8))
    torch.manual_seed(0)
    model = from_preset("titans-lmm", memory=memory).eval()
    x = torch.randint(1, 256, (2, 13), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=12, do_sample=False, num_beams=3, pad_token_id=0)
    assert torch.equal(model.generate(x, use_cache=True, **settings), model.generate(x, use_cache=False, **settings))
