"""nestedmemory.timeseries.baselines: the library baselines (Nixtla's ``neuralforecast``, optional) behind our forecast
contract. Tests that build a model are skipped where the library is not installed."""

import importlib.util
import os
import random

import numpy as np
import pytest
import torch

from nestedmemory.timeseries import baselines as tsb

needs_library = pytest.mark.skipif(importlib.util.find_spec(tsb.PACKAGE) is None,
                                   reason=f"the optional {tsb.PACKAGE} package is not installed")
# parameters the library's model never uses: TimeMixer's (as TSLib's) cross layer after mixing exists only for
# channel_independence=1, and its time-mark embeddings serve only exogenous calendar features
UNUSED = {"timemixer": ("out_cross_layer", "pdm_blocks.0.layer_norm", "temporal_embedding")}
TINY = dict(seq_len=32, pred_len=8, num_variates=3, dim=8, layers=1, heads=2, ff=16, patch_len=8, stride=4)


def build(name, **overrides):
    return tsb.baseline(name, **{**TINY, **overrides})


@needs_library
@pytest.mark.parametrize("name", list(tsb.MODELS))
def test_each_baseline_forecasts_our_windows_and_trains(name):
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(4, TINY["seq_len"], TINY["num_variates"])
    out = model(x)
    assert out.shape == (4, TINY["pred_len"], TINY["num_variates"])
    out.square().mean().backward()
    unused = UNUSED.get(name, ())
    for key, param in model.named_parameters():
        if not param.requires_grad:  # PatchTST's fixed attention scale
            continue
        if any(part in key for part in unused):
            assert param.grad is None, key
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), key


@needs_library
@pytest.mark.parametrize("name", list(tsb.MODELS))
def test_the_wrapper_feeds_the_library_model_as_its_own_pipeline_would(name):
    """Channel-independent models see each variate as its own series [B, L, 1]; multivariate ones the whole
    window [B, L, V] (``n_series = V``). Compared in eval mode, fp64."""
    torch.manual_seed(0)
    model = build(name).double().eval()
    x = torch.randn(2, TINY["seq_len"], TINY["num_variates"], dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        if model.multivariate:
            expected = model.net(tsb._windows(x))
        else:
            expected = torch.cat([model.net(tsb._windows(x[..., v:v + 1])) for v in range(x.shape[-1])], dim=-1)
    torch.testing.assert_close(out, expected)
    if not model.multivariate:  # a variate's forecast depends on that variate only
        x2 = x.clone()
        x2[..., 0] += 1.0
        with torch.no_grad():
            torch.testing.assert_close(model(x2)[..., 1:], out[..., 1:])


@needs_library
def test_building_draws_from_the_callers_rng_and_leaves_the_global_state_alone():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    env = os.environ.get("PL_GLOBAL_SEED")
    first = build("patchtst")
    assert np.random.rand() == np.random.RandomState(1).rand()
    assert random.random() == random.Random(1).random()
    assert os.environ.get("PL_GLOBAL_SEED") == env
    after = torch.rand(3)
    torch.manual_seed(1)
    torch.randint(2**31 - 1, ())  # the one draw baseline() takes for the library's seed
    torch.testing.assert_close(torch.rand(3), after)

    torch.manual_seed(1)
    again = tsb.baseline(**first.config)
    for (key, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)
    torch.manual_seed(2)
    other = build("patchtst")
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


@needs_library
def test_shared_knobs_reach_the_library_under_its_names():
    patchtst = build("patchtst", revin=False)
    assert patchtst.net.hparams["hidden_size"] == 8 and patchtst.net.hparams["encoder_layers"] == 1
    assert patchtst.net.hparams["revin"] is False and patchtst.net.hparams["revin_subtract_last"] is False
    itransformer = build("itransformer", factor=3)  # a library-only argument passes through
    assert itransformer.net.hparams["hidden_size"] == 8 and itransformer.net.hparams["n_series"] == 3
    assert itransformer.net.hparams["factor"] == 3 and itransformer.config["factor"] == 3
    assert build("dlinear", moving_avg=5).net.hparams["moving_avg_window"] == 5  # dim etc. ignored: no such knob


@needs_library
def test_bad_options_and_inputs_raise_one_line_errors():
    with pytest.raises(tsb.BaselineError, match="DLinear has no option no_such_option"):
        build("dlinear", no_such_option=1)
    model = build("dlinear")
    with pytest.raises(tsb.BaselineError, match="expected x of shape"):
        model(torch.randn(2, TINY["seq_len"], 5))
    with pytest.raises(tsb.BaselineError, match="no mask"):
        model(torch.randn(2, TINY["seq_len"], 3), mask=torch.ones(2, TINY["seq_len"]))


def test_unknown_names_tasks_and_sizes_are_refused_before_the_library_is_needed():
    with pytest.raises(tsb.BaselineError, match="unknown baseline"):
        build("autoformerz")
    with pytest.raises(tsb.BaselineError, match="only forecasts"):
        build("dlinear", task="classify")
    with pytest.raises(tsb.BaselineError, match="pred_len must be a positive integer"):
        build("dlinear", pred_len=0)
