"""The one-token decoding step reads nothing back from the device (issue 13, targets 3 and 8): traced by
``torch.compile``'s front end it is one graph, without breaks, for every block type and the polynomial-feature
memories (whose ``feature_coeffs`` value check ran every call) and the exp-kernel ones (whose stream slots were read
back with a ``nonzero``). A host sync per layer (e.g. ``bool(mask.all())``) would stall a GPU's queue every token and
split a compiled step into pieces. ``swdt``'s Omega window (its halo slots and window gates were found with a
``nonzero``) is tested too; every other preset traces as one graph as well (checked by hand, 2026-12-06), and
``tests/test_device_syncs.py`` checks every preset's training and decoding steps for read-backs."""

import pytest
import torch

from nestedmemory.models import from_preset
from nestedmemory.models.modeling import cache_of


@pytest.mark.parametrize("preset", ["titans-lmm", "titans-mac", "titans-mag", "titans-mal", "hope", "tnt",
                                    "transformer++", "omeganet", "atlas", "deeptransformer", "dot", "swdt"])
def test_a_decoding_step_is_one_graph(preset):
    torch.manual_seed(0)
    model = from_preset(preset, size="tiny", vocab_size=64).eval()
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        cache = cache_of(model(input_ids=ids, use_cache=True))
        explained = torch._dynamo.explain(model.forward)(input_ids=ids[:, -1:], cache=cache, use_cache=True)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
