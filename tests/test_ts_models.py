"""Time-series task models (``nestedmemory.timeseries``: embed, heads, models, zoo, tslib): shapes per task and
backbone, RevIN, PatchTST's patching, channel independence, causality in time, the classification padding mask,
rebuilding from ``model.config``, the TSLib adapter, one-line errors, and a learning smoke test."""

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from nestedmemory.timeseries.embed import RevIN, num_tokens, patchify, unpatchify
from nestedmemory.timeseries.models import CHANNEL_MIXING, TimeSeriesModel, build_model
from nestedmemory.timeseries.tslib import Model
from nestedmemory.timeseries.zoo import ChannelIndependent
from nestedmemory.train.config import InvalidSetting

B, L, V, H, K = 2, 32, 3, 8, 4  # batch, window, variates, horizon, classes
SIZES = dict(seq_len=L, num_variates=V, dim=16, layers=1, patch_len=8, stride=4)
TASKS = {"forecast": dict(pred_len=H), "classify": dict(num_classes=K), "anomaly": {}}
OUT = {"forecast": (B, H, V), "classify": (B, K), "anomaly": (B, L, V)}


class Identity(torch.nn.Module):
    """A stub backbone with the contract's constructor."""

    def __init__(self, dim, num_variates, layers):
        super().__init__()

    def forward(self, tokens):
        return tokens


def series(b=B, length=L, v=V, seed=0, dtype=torch.float32):
    return torch.randn(b, length, v, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def build(name="titans-lmm", task="forecast", dtype=torch.float32, **options):
    torch.manual_seed(0)
    return build_model(name, task, **{**SIZES, **TASKS.get(task, {}), **options}).to(dtype).eval()


# --------------------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ["titans-lmm", "mamba2"])
def test_zoo_shapes(name, task):
    model = build(name, task)
    mask = torch.ones(B, L) if task == "classify" else None
    assert model(series(), mask).shape == OUT[task]


@pytest.mark.parametrize("task", TASKS)
def test_stub_backbone_shapes(task):
    sizes = {k: v for k, v in SIZES.items() if k != "layers"}
    model = TimeSeriesModel(Identity(16, V, 1), task, **sizes, **TASKS[task], positional=True, variate_embedding=True)
    assert model(series()).shape == OUT[task]
    assert model.config is None


@pytest.mark.parametrize("name", list(CHANNEL_MIXING))
@pytest.mark.parametrize("task", TASKS)
def test_channel_mixing_shapes(name, task):
    if importlib.util.find_spec(f"nestedmemory.timeseries.{name}") is None:
        pytest.skip(f"nestedmemory.timeseries.{name} is not written yet")
    model = build(name, task)
    assert model.embed.variate is not None  # on by default for channel-mixing models
    assert model(series()).shape == OUT[task]


# --------------------------------------------------------------------------------------------------------------
# RevIN and patching
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine", [False, True])
def test_revin_round_trip(affine):
    revin = RevIN(V, affine=affine).double()
    if affine:
        with torch.no_grad():
            revin.weight.uniform_(0.5, 2)
            revin.bias.normal_()
    x = 3 + 5 * series(dtype=torch.float64)
    normalised, stats = revin.normalise(x)
    if not affine:
        torch.testing.assert_close(normalised.mean(1), torch.zeros(B, V, dtype=torch.float64))
        torch.testing.assert_close(normalised.std(1, unbiased=False), torch.ones(B, V, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(revin.denormalise(normalised, stats), x)


@pytest.mark.parametrize("length, patch_len, stride", [(32, 8, 4), (33, 8, 4), (35, 8, 3), (8, 8, 8), (16, 16, 8),
                                                      (10, 1, 1), (20, 5, 5)])
def test_patching(length, patch_len, stride):
    x = series(length=length, dtype=torch.float64)
    patches = patchify(x, patch_len, stride)
    n = num_tokens(length, patch_len, stride)
    assert patches.shape == (B, V, n, patch_len)
    if patch_len == 1:  # the raw steps
        torch.testing.assert_close(patches[..., 0], x.transpose(1, 2))
    else:  # PatchTST: the end padded with `stride` copies of the last value, ⌊(L − P)/S⌋ + 2 patches
        assert n == (length - patch_len) // stride + 2
        padded = torch.cat([x, x[:, -1:].expand(B, stride, V)], 1)
        for i in range(n):
            torch.testing.assert_close(patches[:, :, i], padded[:, i * stride:i * stride + patch_len].transpose(1, 2))
    torch.testing.assert_close(unpatchify(patches, length, stride), x)  # overlaps averaged back


# --------------------------------------------------------------------------------------------------------------
# channel independence and causality of the zoo backbone
# --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_channel_independence():
    model, x = build("titans-lmm", dtype=torch.float64), series(dtype=torch.float64)
    y = model(x)
    order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(model(x[..., order]), y[..., order])
    changed = x.clone()
    changed[..., 1] = 10 * torch.randn(B, L, dtype=torch.float64)
    z = model(changed)
    torch.testing.assert_close(z[..., [0, 2]], y[..., [0, 2]], rtol=0, atol=1e-12)
    assert not torch.allclose(z[..., 1], y[..., 1])


@pytest.mark.parametrize("name", ["titans-lmm", "mamba2", "transformer++", "hope"])
@torch.no_grad()
def test_zoo_backbone_is_causal_in_time(name):
    torch.manual_seed(0)
    backbone, n = ChannelIndependent(16, V, 2, preset=name).double(), 11
    tokens = torch.randn(B, V, 20, 16, dtype=torch.float64)
    changed = tokens.clone()
    changed[:, :, n + 1:] = torch.randn(B, V, 20 - n - 1, 16, dtype=torch.float64)
    torch.testing.assert_close(backbone(changed)[:, :, :n + 1], backbone(tokens)[:, :, :n + 1], rtol=0, atol=1e-12)


def test_every_trainable_zoo_parameter_gets_a_gradient():  # what DistributedDataParallel needs
    model = build("titans-lmm", "forecast").train()
    model(series()).square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_zoo_chunk_size():
    assert ChannelIndependent(16, V, 1, preset="mamba2", chunk_size=4).model.config.memory["chunk_size"] == 4
    assert ChannelIndependent(16, V, 1, preset="hope").model.config.memory["chunk_size"] == 8  # the tiny chunk
    assert ChannelIndependent(16, V, 1, preset="hope").model.config.cms is None


# --------------------------------------------------------------------------------------------------------------
# the classification padding mask
# --------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_padding_does_not_change_the_classification():
    model = build("titans-lmm", "classify", dtype=torch.float64)
    x, real = series(dtype=torch.float64), torch.tensor([L, 19])  # row 1: 19 real steps, then padding
    mask = (torch.arange(L) < real[:, None]).double()
    logits = model(x * mask[..., None], mask)
    other = x + 100 * (1 - mask[..., None]) * torch.randn(B, L, V, dtype=torch.float64)
    torch.testing.assert_close(model(other, mask), logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x[:1], mask[:1]), logits[:1])  # a full row: as without a mask
    torch.testing.assert_close(model(x[:1]), logits[:1])


# --------------------------------------------------------------------------------------------------------------
# checkpoints, TSLib, errors
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, task, options", [("titans-lmm", "forecast", dict(affine=True, positional=True)),
                                                 ("mamba2", "classify", dict(chunk_size=4, head_dropout=0.1))])
@torch.no_grad()
def test_from_config_rebuilds_the_model(name, task, options):
    model = build(name, task, **options)
    copy = TimeSeriesModel.from_config(model.config).eval()
    assert copy.config == model.config
    assert copy.state_dict().keys() == model.state_dict().keys()
    copy.load_state_dict(model.state_dict())
    x = series()
    torch.testing.assert_close(copy(x), model(x))


@pytest.mark.parametrize("task_name, shape", [("long_term_forecast", (B, H, V)), ("classification", (B, K)),
                                              ("anomaly_detection", (B, L, V))])
def test_tslib_adapter(task_name, shape):
    configs = SimpleNamespace(task_name=task_name, model="Mamba2", seq_len=L, label_len=4, pred_len=H, enc_in=V,
                              c_out=V, d_model=16, e_layers=1, num_class=K, dropout=0.1, use_norm=1, patch_len=8)
    model = Model(configs)
    assert model.model.config["stride"] == 4 and model.model.config["name"] == "mamba2"
    mask = torch.ones(B, L)
    mask[1, 20:] = 0
    marks = mask if task_name == "classification" else torch.zeros(B, L, 4)
    assert model(series(), marks, None, None).shape == shape


@pytest.mark.parametrize("name, task, options, message", [
    ("titans-lmn", "forecast", {}, "unknown model 'titans-lmn'; did you mean 'titans-lmm'?"),
    ("titans-lmm", "regress", {}, "unknown task 'regress'"),
    ("titans-lmm", "forecast", dict(pred_len=None), "--pred_len is needed to forecast"),
    ("titans-lmm", "classify", dict(num_classes=None), "--num_classes is needed to classify"),
    ("titans-lmm", "classify", dict(num_classes=1), "--num_classes must be an integer >= 2"),
    ("titans-lmm", "forecast", dict(seq_len=6), "--seq_len 6 is shorter than --patch_len 8"),
    ("titans-lmm", "forecast", dict(stride=9), "--stride 9 is longer than --patch_len 8"),
    ("titans-lmm", "forecast", dict(dim=0), "--dim must be an integer >= 1, got 0"),
    ("titans-lmm", "forecast", dict(pred_len=-3), "--pred_len must be an integer >= 1, got -3"),
    ("titans-lmm", "forecast", dict(layers=1.5), "--layers must be an integer >= 1, got 1.5"),
    ("titans-lmm", "forecast", dict(head_dropout=1.0), "--head_dropout must be in [0, 1)"),
    ("titans-lmm", "forecast", dict(num_head=2), "unknown option 'num_head'; did you mean 'num_heads'?"),
    ("titans-lmm", "forecast", dict(dim=18), "--model titans-lmm: NestedMemoryConfig.head_dim"),
    ("transformer++", "forecast", dict(chunk_size=4), "has none"),
    ("titans-lmm", "forecast", dict(variate_embedding=True), "channel-independent"),
])
def test_bad_arguments_give_one_line_errors(name, task, options, message):
    with pytest.raises(InvalidSetting) as error:
        build_model(name, task, **{**SIZES, **TASKS.get(task, {}), **options})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_inputs_give_one_line_errors():
    model = build("mamba2", "forecast")
    with pytest.raises(InvalidSetting, match=r"inputs \[batch, seq_len=32, num_variates=3\], got \[2, 32, 4\]"):
        model(series(v=4))
    with pytest.raises(InvalidSetting, match="a padding mask is for classification"):
        model(series(), torch.ones(B, L))
    with pytest.raises(InvalidSetting, match="unknown task 'imputation'"):
        Model(SimpleNamespace(task_name="imputation"))


# --------------------------------------------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------------------------------------------

def test_forecast_loss_falls_on_a_sinusoid():
    torch.manual_seed(0)
    model = build_model("mamba2", "forecast", **{**SIZES, "pred_len": H}).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    t = torch.arange(L + H, dtype=torch.float32)
    phase = torch.rand(16, 1, V) * 6.3
    period = torch.tensor([8.0, 12.0, 16.0])
    wave = torch.sin(2 * torch.pi * t[None, :, None] / period + phase)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(wave[:, :L]), wave[:, L:])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
