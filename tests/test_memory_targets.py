"""Deep memories regress unit-norm values (issue 12 item 2): the small-chunk divergence of the tiny Titans."""

import math

import pytest
import torch

from nestedmemory.layers import MemoryMixer
from nestedmemory.layers import memory as memory_layers
from nestedmemory.memory import MemoryRule, memorize
from nestedmemory.models import from_preset
from nestedmemory.models.presets import TITANS
from nestedmemory.tasks import mqar
from nestedmemory.tasks.common import step_seed


def layer(memory: str, **kwargs) -> MemoryMixer:
    torch.manual_seed(0)
    rule = MemoryRule(memory=memory, objective="l2", retention="decay", learner="momentum", chunk_size=4)
    return MemoryMixer(32, 2, rule=rule, **kwargs).double()


@pytest.mark.parametrize("memory, normalised", [("mlp", True), ("linear", False)])
def test_values_are_unit_norm_for_deep_memories_only(memory, normalised, monkeypatch):
    written = []

    def recording(q, k, v, *args, **kwargs):
        written.append(v)
        return memorize(q, k, v, *args, **kwargs)

    monkeypatch.setattr(memory_layers, "memorize", recording)
    mixer = layer(memory)
    assert mixer.value_norm is normalised
    mixer(3 * torch.randn(2, 23, 32, dtype=torch.float64))
    norms = written[0].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms)) is normalised
    assert layer("mlp", value_norm=False).value_norm is False


@pytest.mark.slow
def test_tiny_titans_at_memory_chunk_4_trains_through_the_former_divergence():
    """``benchmarks/tnt_chunk_mismatch.py``'s recipe (MQAR, vocabulary 128, 64 tokens, 4 pairs, batch 16, AdamW
    1.5e-3, warm-up + cosine over 1000 steps, clipping at 1): with raw values the loss was NaN at step 222."""
    torch.manual_seed(0)
    model = from_preset("titans-lmm", memory=dict(TITANS, chunk_size=4), vocab_size=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / 100 if s < 100 else
                                                 0.1 + 0.45 * (1 + math.cos(math.pi * (s - 100) / 900)))
    for step in range(240):
        data = mqar.generate(16, seed=step_seed(0, step), vocab_size=128, seq_len=64, num_kv_pairs=4)
        loss = model(input_ids=data["input_ids"], labels=data["labels"]).loss
        assert math.isfinite(loss.item()), f"training diverged at step {step}"
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
