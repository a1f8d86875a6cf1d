"""Hope on the task suites: the formal-language runner's per-preset options (model overrides, appending a row to
an existing table), and the training stability of a tiny Hope on parity.

The acceptance target "a tiny Hope reaches ≥ 95 % on parity at Bin0 within a CPU run of minutes" is NOT met yet
(measured, 1 thread): with the preset's memory settings the training diverges — the logits turn non-finite at the
padding positions right after long strings (first seen after 18 AdamW steps at lr 3e-3, ~60–90 at lr 1e-3, measured
with ``cms=None``; the full preset, CMS included, also collapses in the continual run; a smaller memory step or a
larger decay alone only delays it); the labels there are ignored, so the loss stays finite but its gradient is NaN
and AdamW writes NaN into every weight. With ``cms=None`` and ``memory=dict(chunk_size=8, lr_init=0.002,
lr_max=0.01, decay_init=0.1, expansion=1, generator_expansion=1)`` it trains: Bin0 46 % after 300 steps at lr 3e-3
(107 s); at lr 4e-3 it diverges again after ~350 steps. ``test_tiny_hope_learns_parity`` is to be added once a
setting reaches 95 % in ≤ 3 minutes.
"""

import json

import pytest
import torch

from nestedmemory.models import from_preset
from nestedmemory.tasks import formal
from nestedmemory.tasks.common import step_seed


def test_formal_model_overrides_and_append(tmp_path):
    out = tmp_path / "formal.md"
    common = ["--languages", "parity", "--steps", "2", "--batch-size", "4", "--eval-n", "8", "--out", str(out),
              "--threads", "1"]
    formal.main(["--presets", "transformer++"] + common)
    formal.main(["--presets", "hope", "--append", "--model-overrides", '{"cms": null}'] + common + ["--steps", "1"])
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["preset"] for r in data["results"]] == ["transformer++", "hope"]
    assert data["settings"]["steps"] == 2  # the table's protocol is kept; the appended row is noted
    hope = data["results"][1]
    assert hope["steps"] == 1 and hope["overrides"] == {"cms": None}
    text = out.read_text()
    assert "| transformer++ |" in text and "| hope |" in text
    assert 'Row hope: steps 1, model overrides `{"cms": null}`.' in text


@pytest.mark.slow
@pytest.mark.xfail(reason="tiny Hope's training on parity diverges (NaN loss after ~20 steps at lr 3e-3)",
                   strict=False)
def test_tiny_hope_parity_training_stays_finite():
    torch.manual_seed(0)
    model = from_preset("hope", size="tiny", vocab_size=formal.VOCAB_SIZE, cms=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(30):
        data = formal.generate(32, seed=step_seed(0, step), language="parity")
        loss = model(input_ids=data["input_ids"], labels=data["labels"]).loss
        assert torch.isfinite(loss), f"non-finite loss at step {step}"
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
