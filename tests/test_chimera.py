"""Chimera's 2-D selective SSM (nestedmemory.timeseries.chimera) and the chunked scans under it (.scan): every fast
path equals the literal recurrence in fp64 (outputs, states, gradients), the special cases the paper's equations
imply, causality in time, bounded states, and a short learning run."""

import pytest
import torch

from nestedmemory.timeseries.chimera import Axis, Chimera2DSSM, ChimeraBackbone, ssm2d
from nestedmemory.timeseries.scan import linear_scan, selective_scan

from checks import cross_variate_losses

F64 = torch.float64


def loop_scan(log_a, b, initial=None):
    """``h_t = exp(log_a_t) h_{t−1} + b_t`` one step at a time."""
    h = torch.zeros_like(b[..., 0, :, :]) if initial is None else initial
    out = []
    for t in range(log_a.shape[-1]):
        h = log_a[..., t, None, None].exp() * h + b[..., t, :, :]
        out.append(h)
    return torch.stack(out, -3)


@pytest.mark.parametrize("steps", [1, 7, 37, 64])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_linear_scan_matches_loop(steps, chunk_size):
    g = torch.Generator().manual_seed(steps * 100 + chunk_size)
    log_a = (-2 * torch.rand(2, 3, steps, generator=g, dtype=F64)).requires_grad_()
    b = torch.randn(2, 3, steps, 4, 5, generator=g, dtype=F64, requires_grad=True)
    initial = torch.randn(2, 3, 4, 5, generator=g, dtype=F64, requires_grad=True)
    got, want = linear_scan(log_a, b, initial, chunk_size), loop_scan(log_a, b, initial)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn(want.shape, generator=g, dtype=F64)
    grads = torch.autograd.grad((got * w).sum(), (log_a, b, initial))
    for a, e in zip(grads, torch.autograd.grad((want * w).sum(), (log_a, b, initial))):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_reverse_linear_scan_is_the_adjoint_recurrence(chunk_size):
    g = torch.Generator().manual_seed(chunk_size)
    log_a, b = -torch.rand(2, 11, generator=g, dtype=F64), torch.randn(2, 11, 3, generator=g, dtype=F64)
    end = torch.randn(2, 3, generator=g, dtype=F64)
    h, want = end, []
    for t in reversed(range(11)):  # h_t = a_{t+1} h_{t+1} + b_t, h_10 = b_10 + end
        h = b[:, t] + (log_a[:, t + 1, None].exp() * h if t < 10 else h)
        want.append(h)
    got = linear_scan(log_a, b, end, chunk_size, reverse=True)
    torch.testing.assert_close(got, torch.stack(want[::-1], 1), rtol=1e-12, atol=1e-12)


def test_linear_scan_scalar_state_and_fp32():
    log_a, b = -torch.rand(3, 50, dtype=F64), torch.randn(3, 50, dtype=F64)
    want = loop_scan(log_a, b[..., None, None])[..., 0, 0]
    torch.testing.assert_close(linear_scan(log_a, b, chunk_size=8), want, rtol=1e-12, atol=1e-12)
    got32 = linear_scan(log_a.float(), b.float(), chunk_size=8)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 6, 64])
def test_selective_scan_is_the_read_out_of_linear_scan(chunk_size):
    g = torch.Generator().manual_seed(chunk_size)
    log_a = -2 * torch.rand(2, 3, 29, generator=g, dtype=F64)
    u = torch.randn(2, 3, 29, 4, generator=g, dtype=F64, requires_grad=True)
    B, C = (torch.randn(2, 1, 29, 5, generator=g, dtype=F64, requires_grad=True) for _ in range(2))
    got = selective_scan(log_a, u, B, C, chunk_size)
    want = (linear_scan(log_a, u.unsqueeze(-1) * B.unsqueeze(-2)) * C.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, e in zip(torch.autograd.grad(got.sum(), (u, B, C)), torch.autograd.grad(want.sum(), (u, B, C))):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def random_cells(V, T, *, heads=2, head_dim=3, state=4, seed=0, coupled=True):
    """Random per-cell inputs of :func:`ssm2d` (batch 2), never zero."""
    g = torch.Generator().manual_seed(seed)

    def axis():
        dt = 0.05 + torch.rand(2, V, heads, T, generator=g, dtype=F64)
        return Axis(-dt * (0.5 + torch.rand(heads, 1, generator=g, dtype=F64)), dt,
                    torch.randn(2, V, 1, T, state, generator=g, dtype=F64),
                    torch.randn(2, V, 1, T, state, generator=g, dtype=F64))

    x = torch.randn(2, V, heads, T, head_dim, generator=g, dtype=F64)
    time, variate = axis(), axis()
    cross = tuple(torch.rand(2, V, heads, T, generator=g, dtype=F64) * (1 - a.log_a.exp())
                  for a in (time, variate)) if coupled else None
    return x, time, variate, cross


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_row_sweep_states_equal_the_double_loop(chunk_size):
    x, time, variate, cross = random_cells(5, 11, seed=chunk_size)
    got = ssm2d(x, time, variate, cross, chunk_size=chunk_size, states=True)
    want = ssm2d(x, time, variate, cross, mode="reference", states=True)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parts", ["coupled", "uncoupled", "time", "variate"])
def test_row_sweep_gradients_equal_the_double_loop(parts):
    """The sweep's hand-written backward, through outputs and every state (so through each row's state
    gradients), for every combination of parts."""
    x, time, variate, cross = random_cells(4, 6, seed=5)
    time = None if parts == "variate" else time
    variate = None if parts == "time" else variate
    cross = cross if parts == "coupled" else None
    leaves = [t.requires_grad_() for t in (x, *(cross or ()))]
    for axis in (time, variate):
        if axis is not None:
            leaves += [f.requires_grad_() for f in (axis.log_a, axis.dt, axis.B, axis.C)]
    grads = []
    for mode in ("scan", "reference"):
        outs = [o for o in ssm2d(x, time, variate, cross, mode=mode, chunk_size=4, states=True) if o is not None]
        loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=F64)).sum()
                   for i, o in enumerate(outs))
        grads.append(torch.autograd.grad(loss, leaves))
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def one_d_ssm(x, axis, drive=None):
    """A plain 1-D selective SSM along the last cell axis (T) of ``x [..., H, T, P]``, one step at a time:
    ``h_t = Ā_t h_{t−1} + drive_t`` (default ``B̄_t ⊗ x_t``), ``y_t = C_t · h_t``."""
    drive = axis.input(x) if drive is None else drive
    h = loop_scan(axis.log_a, drive)
    return (h * axis.C.unsqueeze(-2)).sum(-1)


def test_no_coupling_is_a_time_ssm_plus_a_variate_ssm():
    """Ā2 = Ā3 = 0: a 1-D SSM along time on each variate plus one along the variates at each time step."""
    x, time, variate, _ = random_cells(4, 9, seed=3, coupled=False)
    var = variate.transposed()
    want = one_d_ssm(x, time) + one_d_ssm(x.transpose(-4, -2), var).transpose(-4, -2)
    zero = torch.zeros_like(time.log_a)
    for cross in (None, (zero, zero)):
        for mode in ("scan", "reference"):
            torch.testing.assert_close(ssm2d(x, time, variate, cross, mode=mode, chunk_size=4), want,
                                       rtol=1e-12, atol=1e-12)


def test_one_variate_is_a_1d_selective_ssm_along_time():
    """V = 1: h2 = B̄2 x (no variate predecessor), so Chimera is a 1-D selective SSM along time whose input is
    ``B̄1 x_t + Ā2_t B̄2 x_{t−1}`` with the extra skip ``C2 · B̄2 x_t``."""
    x, time, variate, cross = random_cells(1, 13, seed=4)
    h2 = variate.input(x)
    drive = time.input(x) + cross[0][..., None, None] * torch.nn.functional.pad(h2, (0, 0, 0, 0, 1, -1))
    want = one_d_ssm(x, time, drive) + (h2 * variate.C.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(ssm2d(x, time, variate, cross, chunk_size=5), want, rtol=1e-12, atol=1e-12)


TINY = dict(expand=1, head_dim=4, state_size=3, conv_size=3, mlp_ratio=1)


def twin_backbones(seed=0, **options):
    torch.manual_seed(seed)
    fast = ChimeraBackbone(8, 5, 2, **TINY, **options).double()
    slow = ChimeraBackbone(8, 5, 2, **TINY, **options, mode="reference").double()
    slow.load_state_dict(fast.state_dict())
    return fast, slow


@pytest.mark.parametrize("options", [
    dict(chunk_size=3), dict(chunk_size=64), dict(chunk_size=4, coupling=False),
    dict(chunk_size=2, bidirectional=False, selective=False), dict(chunk_size=5, heads="seasonal")])
def test_scan_equals_reference_outputs_and_all_gradients(options):
    fast, slow = twin_backbones(**options)
    x = torch.randn(2, 5, 7, 8, dtype=F64)
    w = torch.randn(2, 5, 7, 8, dtype=F64)
    grads = []
    for model in (fast, slow):
        xi = x.clone().requires_grad_()
        y = model(xi)
        (y * w).sum().backward()
        grads.append((y, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (y_fast, gx_fast, gp_fast), (y_slow, gx_slow, gp_slow) = grads
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(gx_fast, gx_slow, rtol=1e-10, atol=1e-10)
    assert gp_fast.keys() == gp_slow.keys()
    for name in gp_fast:
        assert gp_fast[name] is not None, name
        torch.testing.assert_close(gp_fast[name], gp_slow[name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("options", [dict(), dict(coupling=False, bidirectional=False)])
def test_backbone_is_causal_in_time(options):
    torch.manual_seed(1)
    model = ChimeraBackbone(8, 3, 2, **TINY, chunk_size=4, **options).double()
    x = torch.randn(2, 3, 10, 8, dtype=F64)
    y = model(x)
    for n in (0, 4, 8):
        changed = x.clone()
        changed[:, :, n + 1:] = torch.randn_like(changed[:, :, n + 1:])
        y2 = model(changed)
        torch.testing.assert_close(y2[:, :, :n + 1], y[:, :, :n + 1], rtol=0, atol=1e-13)
        assert not torch.allclose(y2[:, :, n + 1:], y[:, :, n + 1:])


def bound(ssm, xh, time, variate, cross):
    """``max |B̄ ⊗ x| / (1 − r)`` over cells and both states, ``r`` the state's row sum (module docstring), with
    ``1 − r = (1 − Ā)(1 − σ(c))`` computed without cancellation."""
    worst = []
    for axis, logit in ((time, ssm.coupling_logit[:, 0]), (variate, ssm.coupling_logit[:, 1])):
        gap = -torch.expm1(axis.log_a) * torch.sigmoid(-logit)[:, None, None, :, None]
        worst.append((axis.input(xh).abs().amax((-2, -1)) / gap).max())
    return max(worst)


@pytest.mark.parametrize("scale", ["init", "large"])
def test_states_stay_bounded_over_1k_time_tokens(scale):
    torch.manual_seed(2)
    ssm = Chimera2DSSM(4, head_dim=2, state_size=3, directions=2, time_dt=[(1e-3, 1e-2), (1e-2, 1e-1)],
                       chunk_size=64).double()
    if scale == "large":  # trained-like extremes: saturated couplings, fast and slow decays, large projections
        with torch.no_grad():
            ssm.coupling_logit.copy_(torch.tensor([6.0, -6.0]).expand_as(ssm.coupling_logit))
            ssm.A_log.copy_(torch.tensor([-4.0, 3.0]).expand_as(ssm.A_log))
            ssm.dt_bias.add_(torch.tensor([-6.0, 4.0]).expand_as(ssm.dt_bias))
            for p in ssm.proj:
                p.weight.mul_(20)
    x = 3 * torch.randn(2, 1, 3, 1024, 4, dtype=F64)
    with torch.no_grad():
        cells = ssm.cells(x)
        y, h1, h2 = ssm2d(*cells, states=True)
        limit = bound(ssm, *cells)
    assert torch.isfinite(y).all() and torch.isfinite(limit)
    assert max(h1.abs().max(), h2.abs().max()) <= limit * (1 + 1e-9)


def test_head_groups_start_in_their_step_ranges():
    torch.manual_seed(0)
    ssm = ChimeraBackbone(16, 2, 1, expand=1, head_dim=4).blocks[0].mixer.ssm
    dt = torch.nn.functional.softplus(ssm.dt_bias[:, 0])      # time axis, [dirs, heads]
    assert ((dt[:, :2] >= 1e-3 - 1e-9) & (dt[:, :2] <= 1e-2 + 1e-9)).all()   # trend: long memory
    assert ((dt[:, 2:] >= 1e-2 - 1e-9) & (dt[:, 2:] <= 1e-1 + 1e-9)).all()   # seasonal
    with pytest.raises(ValueError, match="cannot be split"):
        ChimeraBackbone(4, 2, 1, expand=1, head_dim=4)


def test_not_selective_means_input_independent_parameters():
    torch.manual_seed(0)
    ssm = Chimera2DSSM(8, head_dim=4, state_size=3, selective=False)
    (_, t1, v1, _), (_, t2, v2, _) = (ssm.cells(torch.randn(1, 2, 3, 4, 8)) for _ in range(2))
    for a, b in ((t1, t2), (v1, v2)):
        for field in ("log_a", "dt", "B", "C"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field))


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ValueError, match="tokens"):
        ChimeraBackbone(8, 3, 1, **TINY)(torch.randn(1, 4, 5, 8))
    with pytest.raises(ValueError, match="mode"):
        ChimeraBackbone(8, 3, 1, **TINY, mode="fast")
    with pytest.raises(ValueError, match="heads"):
        ChimeraBackbone(8, 3, 1, **TINY, heads="all")
    with pytest.raises(ValueError, match="coupling"):
        Chimera2DSSM(8, head_dim=4, axes=("time",))


def test_learns_a_cross_variate_target():
    """Predict variate 0 at t from variate 1 at t and variate 2 at t − 1 (across variates and time): loss falls."""
    torch.manual_seed(0)
    losses = cross_variate_losses(ChimeraBackbone(8, 3, 1, **TINY, chunk_size=8))
    assert losses[-1] < 0.6 * losses[0], losses
