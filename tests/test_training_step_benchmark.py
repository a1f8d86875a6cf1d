"""benchmarks/training_step.py's machinery in seconds: a checked step, the peak-memory subprocess and the table (no
timings asserted)."""


from checks import load_benchmark

bench = load_benchmark("training_step")


def test_a_training_step_is_timed_with_its_peak_memory_and_reported(monkeypatch):
    monkeypatch.setattr(bench, "titans_pytorch_mac", lambda: None)  # the optional package is not needed here
    data = bench.run(dict(batch=1, length=32, repeats=1), ["titans-mac"])
    row = data["rows"]["titans-mac"]
    assert row["tokens_per_s"] > 0 and row["parameters"] > 0
    assert "| titans-mac |" in bench.markdown(data)


def test_our_models_match_the_anchor_parameter_count():
    target = 10_160_000
    for preset in bench.PRESETS:
        count = sum(p.numel() for p in bench.ours(preset, target).parameters())
        assert abs(count - target) / target < 0.02, preset
