"""Hope on the task suites: the formal-language runner's per-preset options (model overrides, appending a row to
an existing table), the training stability of a tiny Hope on parity, and the issue's acceptance target: a tiny Hope
reaches ≥ 95 % Bin0 on parity within minutes on the CPU.

A tiny Hope used to diverge to NaN on parity after ~20 AdamW steps: the self-generated targets ``v̂ = M(v)`` grow with
the memory being written, which makes the ℓ2 write expansive for un-normalised v (docs/decisions.md, "Stability").
With v and v̂ ℓ2-normalised and DGD's implicit step it trains; ``test_tiny_hope_parity_training_stays_finite``
guards it. It then tracked parity only once its memories could reflect (over-relaxed implicit step, large steps on
the output layer, bounded steps on the inner layer: docs/hope_parity.md); ``test_tiny_hope_learns_parity`` guards it.
"""

import json

import pytest
import torch

from nestedmemory.models import from_preset
from nestedmemory.tasks import formal
from nestedmemory.tasks.common import step_seed
from nestedmemory.tasks.training import train_on_task


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
@pytest.mark.parametrize("memory", [{}, {"momentum": 0.9, "chunk_size": 4}], ids=["dgd", "dgd-momentum"])
def test_tiny_hope_parity_training_stays_finite(memory):
    """The first 30 steps diverged before the normalisation (NaN at step 22; with momentum at step 167)."""
    torch.manual_seed(0)
    model = from_preset("hope", size="tiny", vocab_size=formal.VOCAB_SIZE, cms=None, memory=memory)
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


@pytest.mark.slow
def test_tiny_hope_learns_parity():
    """The tiny Hope (its self-modifying Titans blocks, ``cms=None`` as in the formal-languages table) recognises
    parity at the training lengths 1–50 (every prefix right) within 400 AdamW steps (≈ 3 min on one CPU core; at 150
    steps only half the seeds get there, at 400 every seed tried: docs/hope_parity.md). Checked every 100 steps of
    the 400-step schedule, stopping once reached (seed 0: 86 % at step 100, 100 % at step 200)."""
    torch.manual_seed(0)
    model = from_preset("hope", size="tiny", vocab_size=formal.VOCAB_SIZE, cms=None)
    results = []

    def reached(model) -> bool:
        results.append(formal.evaluate(model, n=128, seed=1_000_003, batch_size=32, language="parity",
                                       bins=formal.BINS[:1]))
        return results[-1]["bin"]["0"] >= 0.95

    losses = train_on_task(model, formal, steps=400, batch_size=32, lr=3e-3, seed=0, language="parity",
                           bins=formal.BINS[:1], until=reached, check_every=100)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    if len(losses) == 400:
        reached(model)
    assert results[-1]["bin"]["0"] >= 0.95, results[-1]
