"""Continuum Memory System (NL §7.1, Eq. 70-74) and the ``hope-attention`` preset: the segment-parallel forward
equals token-by-token decoding (the recurrent reference) in outputs and in outer-loss gradients; updates land
exactly at their periods and only change later outputs; ``η = 0`` is the frozen MLP; ad-hoc level stacking from
Transformer++ is exact; every CMS parameter learns; generation, save/load, configuration errors."""

import math

import pytest
from checks import decode
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from nestedmemory.cli import relative_error
from nestedmemory.models import NestedMemoryConfig, NestedMemoryForCausalLM, from_preset
from nestedmemory.models.cms import VARIANTS, ContinuumMemory, stack_levels
from nestedmemory.models.modeling import cache_of

VOCAB = 32



def small(dtype=torch.float64, **cms):
    """A 2-block Hope-Attention with a visible in-context step."""
    torch.manual_seed(0)
    config = NestedMemoryConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=32,
                                architecture="transformer", cms=dict(dict(periods=[3, 6], lr_init=0.05), **cms))
    return NestedMemoryForCausalLM(config).to(dtype)


def tokens(b=2, t=13, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def frozen_logits(model, x):
    """The model with its CMS levels at their initial weights (no update ever), block by block."""
    hidden = model.model.embeddings(x)
    for layer in model.model.layers:
        hidden, _ = layer(hidden)
    return model.lm_head(model.model.norm(hidden))


def set_steps(model, *values):
    """``η^{(ℓ)}`` of every block (``0`` exactly through ``σ(−∞)``)."""
    with torch.no_grad():
        for cms in (m for m in model.modules() if isinstance(m, ContinuumMemory)):
            for i, v in enumerate(values):
                cms.step[i] = -math.inf if v == 0 else math.log(v / (cms.lr_max - v))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("periods, t", [([2], 7), ([3, 6], 13), ([2, 4, 8], 19), ([4, 4], 10)])
def test_segment_parallel_equals_recurrent_in_outputs_and_gradients(variant, periods, t):
    """Full forward (segments of the smallest period, each differentiated in place) vs one token at a time
    through the cache (each segment re-run from its start when it completes), fp64, outer loss through the
    updates (create_graph)."""
    if variant == "nested" and periods != sorted(periods):
        pytest.skip("nested needs increasing periods")
    model, x = small(variant=variant, periods=periods), tokens(t=t)
    weights = torch.randn(2, t, VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    first = periods[0] + 1  # a prefill that ends inside a segment, then pieces across segment borders
    for schedule in ([t], [1] * t, [first] + [2] * ((t - first) // 2) + [1] * ((t - first) % 2)):
        model.zero_grad()
        logits = decode(model, x, schedule)[0][:, :t]
        (logits * weights).sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.numel()]))
    (full, full_grads), *others = results
    for logits, grads in others:
        assert relative_error(full, logits) < 1e-10
        for a, b in zip(full_grads, grads):
            assert relative_error(a, b) < 1e-9


@torch.no_grad()
def test_update_equals_the_summed_gradient_of_the_segment_loss():
    """After one segment, level 1 of every block holds ``θ_0 − η Σ_{pairs in segment} ∇ CE`` (Eq. 71) and level
    2 (period 6) is untouched."""
    model, x = small(periods=[3, 6]), tokens(b=1, t=3)
    cache = cache_of(model(x, use_cache=True))
    with torch.enable_grad():
        frozen = frozen_logits(model, x)
        F.cross_entropy(frozen[0, :-1], x[0, 1:], reduction="sum").backward()
    for block, state in zip(model.model.layers, cache.continuum.weights):
        eta = block.mlp.lr()
        for level, (weights, step) in enumerate(zip(state, (eta[0], 0.0))):
            params = [block.mlp.levels[level].gate_proj, block.mlp.levels[level].up_proj,
                      block.mlp.levels[level].down_proj]
            for w, p in zip(weights, params):
                torch.testing.assert_close(w[0], p.weight - step * p.weight.grad, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_updates_happen_exactly_at_their_periods():
    """Only level ℓ learning: outputs equal the frozen model's up to and including position C(ℓ) − 1 and differ
    from position C(ℓ) on."""
    x = tokens(t=14)
    for level, period in enumerate((3, 6)):
        model = small(periods=[3, 6])
        set_steps(model, *(0.05 if i == level else 0 for i in range(2)))
        gap = (model(x).logits - frozen_logits(model, x)).abs().amax((0, 2))
        assert gap[:period].max() < 1e-12 and (gap[period:] > 1e-6).all(), (period, gap)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_zero_step_is_the_frozen_mlp_and_later_tokens_never_change_earlier_outputs(variant):
    x = tokens(t=20)
    model = small(variant=variant, lr_init=0.0)
    assert relative_error(model(x).logits, frozen_logits(model, x)) < 1e-12
    model = small(variant=variant)
    for t in (2, 3, 7, 12):
        y = x.clone()
        y[:, t + 1:] = tokens(t=20 - t - 1, seed=5)
        torch.testing.assert_close(model(x).logits[:, :t + 1], model(y).logits[:, :t + 1], rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_level_stacking_from_transformer_is_exact_at_zero_step(variant):
    base, x = from_preset("transformer++").double().eval(), tokens(t=20)
    x = x * 7 % 256
    stacked = stack_levels(base, periods=[4, 16], variant=variant, lr_init=0.0).eval()
    assert relative_error(base(x).logits, stacked(x).logits) < 1e-13  # fp64; segment-wise op order differs
    learning = stack_levels(base, periods=[4, 16], variant=variant).eval()
    gap = (base(x).logits - learning(x).logits).abs().amax((0, 2))
    assert gap[:4].max() < 1e-12 and (gap[4:] > 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("first_order", [False, True])
def test_every_cms_parameter_gets_a_finite_nonzero_gradient(variant, first_order):
    model, x = small(torch.float32, variant=variant, first_order=first_order), tokens(t=20)
    model(x, labels=x).loss.backward()
    for name, p in model.named_parameters():
        if ".mlp." in name:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("first_order", [False, True])
def test_outputs_do_not_depend_on_the_grad_mode(first_order):
    """The inner gradient is the segment's own ``∇_θ`` whether or not the outer loss will backpropagate through the
    updates (a segment must not differentiate through earlier segments that used the same weights)."""
    model, x = small(first_order=first_order), tokens(t=13)
    with torch.no_grad():
        reference = model(x).logits
    assert relative_error(reference, model(x).logits.detach()) < 1e-12


def test_first_order_drops_only_the_second_order_terms():
    """Same outputs; gradients differ (the accumulated gradients are constants for the outer loss)."""
    x, grads = tokens(t=13), []
    for first_order in (False, True):
        model = small(first_order=first_order)
        loss = model(x, labels=x).loss
        loss.backward()
        grads.append((loss.item(), model.model.layers[0].mlp.levels[0].gate_proj.weight.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    assert not torch.allclose(grads[0][1], grads[1][1])


@pytest.mark.parametrize("schedule", [[7] + [1] * 30, [5, 11, 1, 1, 16, 3], [1] * 37])
@torch.no_grad()
def test_hope_attention_prefill_then_decoding_equals_full_forward(schedule):
    torch.manual_seed(0)
    model, x = from_preset("hope-attention").eval(), tokens(t=37) * 5 % 256
    decoded, cache = decode(model, x, schedule)
    assert relative_error(model(x).logits, decoded) < 1e-4
    assert cache.seen_tokens == 37 and cache.continuum.segment.shape[1] == 37 % 4


@torch.no_grad()
def test_hope_attention_generates_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = from_preset("hope-attention", cms=dict(periods=[2, 8], variant="independent")).double().eval()
    prompt = tokens(t=5) * 3 % 256
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False)
    expected = prompt
    for _ in range(6):
        expected = torch.cat((expected, model(expected).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(generated, expected)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).double().eval()
    assert loaded.config.cms == model.config.cms
    # equal up to rounding: memory-mapped safetensors weights are not 64-byte aligned, so kernels may vectorise
    # differently than on the in-memory copy
    torch.testing.assert_close(model(expected).logits, loaded(expected).logits, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_fast_weights_stay_fp32_in_a_bf16_model():
    model = small(torch.bfloat16)
    out = model(tokens(t=7), use_cache=True)
    assert out.logits.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for block in cache_of(out).continuum.weights for level in block
               for w in level)


def test_loss_falls_on_a_learnable_task():
    """Successor task (a fixed permutation of 32 tokens), 30 AdamW steps of the tiny Hope-Attention."""
    torch.manual_seed(0)
    model = from_preset("hope-attention")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    successor = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    generator, losses = torch.Generator().manual_seed(1), []
    for _ in range(30):
        x = torch.empty(4, 16, dtype=torch.long)
        x[:, 0] = torch.randint(0, 32, (4,), generator=generator)
        for i in range(1, 16):
            x[:, i] = successor[x[:, i - 1]]
        loss = model(x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < min(0.5 * losses[0], math.log(32)), losses


BAD = [dict(periods=[]), dict(periods=[1, 4]), dict(periods=[4, 6]), dict(periods="4"), dict(variant="tree"),
       dict(variant="nested", periods=[8, 4]), dict(lr_init=0.5, lr_max=0.1), dict(lr_max=0), dict(first_order=1),
       dict(rate=0.1), [4, 16]]


@pytest.mark.parametrize("cms", BAD, ids=range(len(BAD)))
def test_bad_cms_configuration_names_the_field(cms):
    with pytest.raises(ValueError, match=r"NestedMemoryConfig\.cms"):
        NestedMemoryConfig(architecture="transformer", cms=cms)


def test_cms_needs_the_lm_head():
    model = small()
    with pytest.raises(ValueError, match="LM head"):
        model.model(tokens())
