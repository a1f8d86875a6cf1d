"""benchmarks/default_run.py's machinery in seconds: a run measured from the outside, the parameter-matched
baseline and the table (no timings asserted)."""

from checks import load_benchmark

bench = load_benchmark("default_run")

TINY = ["--model.size", "tiny", "--max_steps", "2", "--batch_size", "2", "--data.seq_len", "32",
        "--data.val_tokens", "256", "--sample.max_new_tokens", "4", "--progress", "false"]


def test_a_run_is_measured_from_its_process_and_its_run_folder(tmp_path):
    row = bench.train(tmp_path / "run", "--model.preset", "transformer++", *TINY)
    assert row["wall_s"] > 0 and row["peak_mb"] > 0 and row["steps"] == 2 and row["val_loss"] > 0
    data = dict(machine=dict(cpu_model="cpu", logical_cpus=2, torch="2"), load=dict(loadavg_1m=0.0),
                source=dict(repo_head="abc"), date="today", rows={"x": dict(row, parameters=1000)})
    assert "| x | `nestedmemory train --model.preset transformer++" in bench.markdown(data)


def test_the_baseline_matches_the_default_models_parameter_count():
    target = bench.parameters(bench.DEFAULT_PRESET)
    flags, count = bench.baseline_flags(target)
    assert flags[:2] == ["--model.preset", bench.BASELINE] and abs(count - target) / target < 0.03
