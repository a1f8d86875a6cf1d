"""benchmarks/memory_core.py's ``--baseline``: a git revision's memory core imported beside today's (no timings)."""

import pytest

from checks import load_benchmark

bench = load_benchmark("memory_core")


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_the_baseline_at_head_agrees_with_today_s_core(name):
    bench.BASELINE = bench.BASELINE or bench.load_baseline("HEAD")
    rule = bench.RULES[name]
    assert bench.BASELINE.__name__ == "baseline_nestedmemory.memory"
    assert bench.baseline_difference(rule, bench.make_case(rule, 80)) < bench.AGREE_RTOL


def test_an_unknown_revision_is_a_one_line_error():
    with pytest.raises(SystemExit, match="--baseline no-such-rev: git archive failed"):
        bench.load_baseline("no-such-rev")
