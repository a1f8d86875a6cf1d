"""No host syncs in the hot loop (issue 13, target 8), checked without a GPU: a training step (forward and backward)
and a cached decoding step of every preset, and a training step of the time-series backbones, dispatch no operator
that reads a value back from the device — no ``.item()`` / ``bool(tensor)`` (``_local_scalar_dense``,
``is_nonzero``), no ``nonzero`` or boolean-mask indexing (whose output shape depends on the data), no ``unique``. On
an accelerator each would stall the device's queue once per layer and step. ``memorize``'s argument value checks
run only on CPU tensors (``api._value_checks``), so they are switched off here as they are on an accelerator."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nestedmemory.memory.api as api
from nestedmemory.models import PRESETS, from_preset
from nestedmemory.models.modeling import cache_of
from nestedmemory.timeseries.models import CHANNEL_MIXING, build_model

READ_BACK = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
             "aten::unique", "aten::_unique", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim"}
INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class ReadBacks(TorchDispatchMode):
    """Records every dispatched operator that reads a value back from the device."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        masks = name in INDEXING and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                         for a in args if isinstance(a, (list, tuple)) for i in a)
        data_sized = name == "aten::repeat_interleave" and func._overloadname != "self_int" \
            and (kwargs or {}).get("output_size") is None
        if name in READ_BACK or masks or data_sized:
            self.found.append(f"{func}")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def as_on_an_accelerator(monkeypatch):
    monkeypatch.setattr(api, "_value_checks", lambda t: False)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_training_and_decoding_steps_read_nothing_back(preset, as_on_an_accelerator):
    torch.manual_seed(0)
    model = from_preset(preset, size="tiny", vocab_size=64)
    ids = torch.randint(0, 64, (2, 20))
    training = ReadBacks()
    with training:
        model(input_ids=ids, labels=ids).loss.backward()
    model.eval()
    with torch.no_grad():
        cache = cache_of(model(input_ids=ids, use_cache=True))
        decoding = ReadBacks()
        with decoding:
            model(input_ids=ids[:, -1:], cache=cache, use_cache=True)
    assert not training.found and not decoding.found, (training.found[:5], decoding.found[:5])


@pytest.mark.parametrize("name", [*CHANNEL_MIXING, "titans-lmm"])
def test_time_series_training_steps_read_nothing_back(name, as_on_an_accelerator):
    """Chimera, TSM2 and Hydra (their 2-D scans over time and variates) and a zoo preset run per channel. (The graph
    models are not covered: PyG's ``to_dense_batch`` sizes its output from the batch's data.)"""
    torch.manual_seed(0)
    model = build_model(name, "forecast", seq_len=48, num_variates=3, pred_len=12, dim=32, layers=1, patch_len=8,
                        stride=8)
    with ReadBacks() as probe:
        model(torch.randn(2, 48, 3)).square().mean().backward()
    assert not probe.found, probe.found[:5]


def test_the_check_sees_a_read_back():
    x = torch.randn(6)
    with ReadBacks() as probe:
        x[x > 0].sum().item()
    assert probe.found == ["aten.index.Tensor", "aten._local_scalar_dense.default"]
