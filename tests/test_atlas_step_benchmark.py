"""benchmarks/atlas_step.py's machinery in seconds: the anchor of the Newton–Schulz backward (autograd through the
literal steps) computes the same loss and gradients, and the quick run reports every model."""

import torch

from checks import load_benchmark

bench = load_benchmark("atlas_step")


def test_the_literal_newton_schulz_is_the_same_model(monkeypatch):
    """Also where Muon's chunks are recomputed in the backward (checkpointed: forced here)."""
    from nestedmemory.memory import chunked

    monkeypatch.setattr(chunked, "MUON_STORED_BYTES", 0)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    fast, literal = bench.build("atlas++"), bench.build(bench.AUTOGRAD_NS)
    losses = [fast(input_ids=ids, labels=ids).loss]
    losses[0].backward()
    with bench.literal_newton_schulz():
        losses.append(literal(input_ids=ids, labels=ids).loss)
        losses[1].backward()
    torch.testing.assert_close(*losses)
    for a, b in zip(fast.parameters(), literal.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    assert bench.maps._QuinticSteps is not bench._LiteralSteps  # restored


def test_quick_run_reports_every_model():
    data = bench.run(dict(bench.QUICK, length=16), [bench.ANCHOR, bench.AUTOGRAD_NS])
    assert set(data["rows"]) == {bench.ANCHOR, bench.AUTOGRAD_NS}
    assert "| titans-lmm |" in bench.markdown(data) and "1.0×" in bench.markdown(data)
