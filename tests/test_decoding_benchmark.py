"""benchmarks/decoding.py's machinery in seconds: every architecture generates through the cache and without it, the
table and its hand-written notes (no timings asserted)."""


from nestedmemory.tasks.report import write_keeping_notes_with_json

from checks import load_benchmark

bench = load_benchmark("decoding")


def test_every_architecture_decodes_and_the_report_keeps_notes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "titans_pytorch_mac", lambda: None)  # the optional package is timed elsewhere
    data = bench.run(dict(batches=[1, 2], new_tokens=2, prompt=4, repeats=1), list(bench.MODELS))
    assert set(data["rows"]) == set(bench.MODELS)
    for row in data["rows"].values():
        assert all(row[kind][b] > 0 for kind in ("cached", "uncached") for b in (1, 2))
        assert row["ops_per_step"][1] > 0 and row["weight_floor_tokens_per_s_batch1"] > 0
        assert row["linear_floor_tokens_per_s_batch1"] > 0
    out = tmp_path / "decoding.md"
    out.write_text("old tables\n" + bench.NOTES_MARK + "\nmy notes\n")
    write_keeping_notes_with_json(out, bench.markdown(data), data, bench.NOTES_MARK)
    text = out.read_text()
    assert "| mac |" in text and "cached B=2" in text and text.endswith("my notes\n")
    assert out.with_suffix(".json").exists()
