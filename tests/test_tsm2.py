"""TSM2 (nestedmemory.timeseries.tsm2): causal in time, each mixer mixes along its own axis only, the weighted
averaging follows MambaMixer's equations (one-hot weights = the plain stack), scan = reference, and it learns."""

import pytest
import torch

from nestedmemory.timeseries.tsm2 import TSM2Backbone

from checks import cross_variate_losses

F64 = torch.float64
TINY = dict(expand=1, head_dim=4, state_size=3, conv_size=3, chunk_size=4)


def backbone(layers=2, seed=0, **options):
    torch.manual_seed(seed)
    return TSM2Backbone(8, 3, layers, **TINY, **options).double()


def test_causal_in_time():
    model = backbone()
    x = torch.randn(2, 3, 10, 8, dtype=F64)
    y = model(x)
    for n in (0, 5, 8):
        changed = x.clone()
        changed[:, :, n + 1:] = torch.randn_like(changed[:, :, n + 1:])
        y2 = model(changed)
        torch.testing.assert_close(y2[:, :, :n + 1], y[:, :, :n + 1], rtol=0, atol=1e-13)
        assert not torch.allclose(y2[:, :, n + 1:], y[:, :, n + 1:])


def test_each_mixer_mixes_along_its_own_axis():
    """The token mixer keeps variates apart (only the blocks' 2-D norm couples them); the channel mixer keeps time
    tokens apart and reads every variate (bidirectional)."""
    model = backbone(layers=1)
    token, channel = model.token[0].mixer, model.channel[0].mixer
    x = torch.randn(2, 3, 6, 8, dtype=F64)
    changed = x.clone()
    changed[:, 2] += 1.0
    torch.testing.assert_close(token(changed)[:, :2], token(x)[:, :2], rtol=0, atol=1e-13)
    assert (channel(changed) - channel(x)).abs().amax((0, 2, 3)).min() > 0    # every variate sees variate 2
    changed = x.clone()
    changed[:, :, 3] += 1.0
    diff = (channel(changed) - channel(x)).abs().amax((0, 1, 3))
    assert diff[3] > 0 and diff[torch.arange(6) != 3].max() == 0


def test_one_hot_weights_are_the_plain_stack():
    model = backbone(layers=3)
    x = torch.randn(2, 3, 7, 8, dtype=F64)
    u = x
    for token, channel in zip(model.token, model.channel):
        u = channel(token(u))
    torch.testing.assert_close(model(x), model.norm(u), rtol=0, atol=0)


def test_weighted_averaging_follows_the_equations():
    model = backbone(layers=2)
    with torch.no_grad():
        for p in (*model.alpha, *model.beta, *model.theta, *model.gamma):
            p.normal_()
    x = torch.randn(2, 3, 5, 8, dtype=F64)
    a, b, th, g = model.alpha, model.beta, model.theta, model.gamma
    t1 = model.token[0]((a[0][0] + b[0][0]) * x)
    c1 = model.channel[0](th[0][0] * x + th[0][1] * t1 + g[0][0] * x)
    t2 = model.token[1](a[1][0] * x + a[1][1] * t1 + b[1][0] * x + b[1][1] * c1)
    c2 = model.channel[1](th[1][0] * x + th[1][1] * t1 + th[1][2] * t2 + g[1][0] * x + g[1][1] * c1)
    torch.testing.assert_close(model(x), model.norm(c2), rtol=1e-12, atol=1e-12)


def test_scan_equals_reference_with_gradients():
    fast, slow = backbone(), backbone(mode="reference")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 7, 8, dtype=F64)
    outs = []
    for model in (fast, slow):
        y = model(x)
        outs.append((y, torch.autograd.grad(y.square().sum(), list(model.parameters()))))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-11, atol=1e-11)
    for a, e in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_wrong_variate_count_raises():
    with pytest.raises(ValueError, match="tokens"):
        backbone()(torch.randn(1, 4, 5, 8, dtype=F64))


def test_learns_a_cross_variate_target():
    """Predict variate 0 at t from variate 1 at t and variate 2 at t − 1 (across variates and time): loss falls."""
    torch.manual_seed(0)
    losses = cross_variate_losses(TSM2Backbone(8, 3, 1, **TINY))
    assert losses[-1] < 0.6 * losses[0], losses
