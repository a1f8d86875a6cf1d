"""benchmarks/tnt_speed.py's machinery in seconds: throughput rounds, training to a target loss and the table (no
timings asserted)."""

from checks import load_benchmark

bench = load_benchmark("tnt_speed")


def test_the_models_differ_only_in_their_memory_chunking():
    counts = {name: sum(p.numel() for p in bench.build(name, 0).parameters()) for name in bench.MODELS}
    assert counts["titans-lmm C=8"] == counts["titans-lmm C=64"]
    assert len({counts[name] for name in bench.MODELS if name.startswith("tnt")}) == 1
    tnt = bench.build("tnt C_L=16", 0).model.layers[0].mixers[0]
    assert tnt.rule.chunk_size == bench.GLOBAL_CHUNK


def test_the_smoothed_curve_averages_the_last_window():
    assert bench.smoothed([4.0, 2.0, 0.0, 6.0], 2) == [4.0, 3.0, 1.0, 3.0]


def test_time_to_a_target_loss_is_measured_and_reported():
    settings = dict(bench.QUICK, length=64, steps=3, target=100.0, held_out=128)
    data = bench.run(settings, ["titans-lmm C=8", "tnt C_L=8"])
    for row in data["rows"].values():
        assert row["finite"] and row["steps_to_target"] == 1 and row["tokens_per_s"] > 0
        assert row["time_to_target"] == row["seconds"] and len(row["curve"]) == 3
    table = bench.markdown(data)
    assert "| tnt C_L=8 |" in table and "1.00×" in table
    unreachable = bench.run(dict(settings, target=0.0), ["tnt C_L=8"])
    assert unreachable["rows"]["tnt C_L=8"]["time_to_target"] is None
    assert "not reached" in bench.markdown(unreachable)
