"""benchmarks/timeseries.py's machinery in seconds: a micro classification section (a channel-mixing and a
channel-independent model, the scikit-learn baselines) and the report, with its hand-written notes kept."""

import json

from checks import load_benchmark

bench = load_benchmark("timeseries")


def test_quick_classification_section_and_the_report(tmp_path, monkeypatch):
    out = tmp_path / "timeseries.md"
    out.write_text("old tables\n" + bench.NOTES_MARK + "\nkept notes\n")
    monkeypatch.setattr(bench, "COMMON", dict(bench.COMMON, dim=16, layers=1))
    bench.main(["--quick", "--section", "classify", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    models = {row["model"] for row in data["classify"]["rows"]}
    assert {"chimera", "titans-lmm", "1-NN (sklearn)", "ridge (sklearn)"} <= models
    assert all(0 <= row["accuracy"][0] <= 1 for row in data["classify"]["rows"])
    text = out.read_text()
    assert "## Classification" in text and text.endswith("kept notes\n") and "old tables" not in text
