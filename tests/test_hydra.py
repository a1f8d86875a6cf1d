"""Hydra's 2-D memory (``nestedmemory.timeseries.hydra``): the tiled computation equals its literal cell-by-cell
definition (outputs and gradients, fp64; the exact recurrence and a 2-D chunk-wise tiling, lengths off the tile
grid), causality in time, stability at user lengths, bad options."""

import pytest
import torch

from nestedmemory.layers.cache import LayerStates
from nestedmemory.timeseries.hydra import HydraBackbone, HydraMemory


def literal(memory: HydraMemory, u):
    """The 2-D recurrence cell by cell: one token per memory call, each memory with its own running state; the
    time head's cross input is the variate output at its tile's corner (the step before the tile)."""
    b, v, n, d = u.shape
    time_chunk, _ = memory.chunks()
    caches = [LayerStates() for _ in range(v)]
    o_var = [[u.new_zeros(b, d) for _ in range(v)] for _ in range(n)]
    corner_of = [u.new_zeros(b, d) for _ in range(v)]
    out = torch.zeros_like(u)
    for t in range(n):
        if t % time_chunk == 0 and t > 0:
            corner_of = [o_var[t - 1][i] for i in range(v)]
        o_time = []
        for i in range(v):
            y, _, caches[i] = memory.time((u[:, i, t] + corner_of[i])[:, None], past_key_values=caches[i],
                                          use_cache=True)
            o_time.append(y[:, 0])
        column = [u[:, i, t] + o_time[i] for i in range(v)]
        for direction, head in enumerate(memory.variate):
            order = range(v) if direction == 0 else range(v - 1, -1, -1)
            cache = LayerStates()
            for i in order:
                y, _, cache = head(column[i][:, None], past_key_values=cache, use_cache=True)
                o_var[t][i] = o_var[t][i] + y[:, 0]
        for i in range(v):
            out[:, i, t] = o_time[i] + o_var[t][i]
    return out


@pytest.mark.parametrize("rule", ["titans-lmm", "memora"])
@pytest.mark.parametrize("chunks", [(1, 1), (3, 2)])
def test_tiled_equals_the_literal_recurrence(rule, chunks):
    torch.manual_seed(0)
    memory = HydraMemory(8, heads=2, rule=rule).double()
    memory.set_chunks(*chunks)
    u = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    fast = memory(u)
    params = [u, *memory.parameters()]
    weights = torch.randn_like(fast)
    grads = torch.autograd.grad((fast * weights).sum(), params, allow_unused=True)
    slow = literal(memory, u)
    slow_grads = torch.autograd.grad((slow * weights).sum(), params, allow_unused=True)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)
    for g, s in zip(grads, slow_grads):
        if g is None or s is None:
            assert g is None and s is None
            continue
        torch.testing.assert_close(g, s, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("chunks", [(1, 1), (4, 3)])
def test_causal_in_time(chunks):
    torch.manual_seed(1)
    model = HydraBackbone(16, 4, layers=2, heads=2, rule="titans-lmm").double()
    model.set_chunks(*chunks)
    u = torch.randn(2, 4, 10, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, :, 6:] = torch.randn_like(changed[:, :, 6:])
    a, b = model(u), model(changed)
    torch.testing.assert_close(a[:, :, :6], b[:, :, :6], rtol=0, atol=0)
    assert (a[:, :, 6:] - b[:, :, 6:]).abs().max() > 1e-3


def test_the_variate_heads_mix_variates():
    """A variate's output depends on the other variates at the same and at earlier steps (both directions)."""
    torch.manual_seed(2)
    model = HydraBackbone(16, 4, layers=1, heads=2, rule="titans-lmm").double()
    u = torch.randn(1, 4, 8, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 2, 3] += 1.0
    delta = (model(u) - model(changed)).abs().amax(-1)[0]
    assert (delta[[0, 1, 3], 3] > 1e-6).all()  # the same step: variate heads, forward and backward
    assert (delta[[0, 1, 3], 5] > 1e-6).all()  # later steps: through the time head's cross input
    assert (delta[:, :3] == 0).all()


def test_without_variate_heads_each_variate_is_its_own_time_memory():
    """The ablation ``variate="none"``: one time memory per variate, nothing crosses variates."""
    torch.manual_seed(4)
    model = HydraBackbone(16, 4, layers=2, heads=2, rule="titans-lmm", variate="none").double()
    u = torch.randn(1, 4, 8, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 2] = torch.randn_like(changed[:, 2])
    delta = (model(u) - model(changed)).abs().amax((-1, -2))[0]
    assert delta[2] > 1e-3 and (delta[[0, 1, 3]] == 0).all()


def test_stable_at_user_lengths():
    """512 time tokens (raw steps of a 512-step window) × 7 variates at width 64, heads of 32: finite, bounded."""
    torch.manual_seed(3)
    model = HydraBackbone(64, 7, layers=1, heads=2, rule="titans-lmm", time_chunk=16)
    u = torch.randn(2, 7, 512, 64)
    with torch.no_grad():
        y = model(u)
    assert torch.isfinite(y).all() and y.abs().max() < 50


@pytest.mark.parametrize("options", [dict(time_chunk=0), dict(variate_chunk=1.5), dict(heads=0),
                                     dict(rule="titans-mac"), dict(rule="titans-lmm-grm"), dict(rule="nope"), dict(variate="sideways")])
def test_bad_options(options):
    with pytest.raises(ValueError, match="Hydra"):
        HydraMemory(8, **options)
