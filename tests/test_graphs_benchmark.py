"""benchmarks/graphs.py (GSM++'s Tables 1–2 analogues) in seconds: ``--quick`` writes every section's tables, the
orderings and the JSON into a temporary folder, keeping the hand-written notes; ``--section`` replaces only its
part."""

import json

import pytest

from checks import load_benchmark

pytest.importorskip("torch_geometric")
pytest.importorskip("networkx")

bench = load_benchmark("graphs")


def test_quick_run_writes_every_section_and_one_section_keeps_the_rest(tmp_path):
    out = tmp_path / "graphs.md"
    out.write_text("old tables\n" + bench.NOTES_MARK + "\nmy notes\n")
    bench.main(["--quick", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(bench.SECTIONS) <= set(data) and data["orderings"]
    for name in bench.SECTIONS:
        assert data[name]["quick"] and data[name]["rows"]
        for row in data[name]["rows"]:
            assert row["parameters"] > 0 and 0 <= row["accuracy"] <= 1 and len(row["runs"]) == len(bench.QUICK["seeds"])
    widths = {r["model"]: r["hidden"] for r in data["baselines"]["rows"]}
    assert set(widths) == {"gsm++", "gps", "gatedgcn"} and widths["gsm++"] == bench.QUICK["hidden"]
    text = out.read_text()
    assert "old tables" not in text and text.endswith("my notes\n")
    assert [r["model"] for r in data["longrange"]["models"]] == ["gsm++", "gps"]
    for title in ("## Local tasks", "## Global tasks", "## Counting without PE", "## GSM++ against GPS",
                  "## Local tasks with summed tokens", "## Long-range connectivity", "gsm++ (MoT)",
                  "## The paper's orderings", "constant predictor", "k-hop", "**w/o PE**"):
        assert title in text, title

    bench.main(["--quick", "--section", "counting", "--out", str(out)])  # one section again: the others are kept
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["local"] == data["local"] and again["counting"]["rows"] == data["counting"]["rows"]
