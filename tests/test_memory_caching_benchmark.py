"""benchmarks/memory_caching.py's machinery in seconds: the package comparison (where the optional ``memory-caching``
package is installed), the S-NIAH section on a micro budget, and the report (tables, figure, hand-written notes)."""


import pytest

from checks import load_benchmark

bench = load_benchmark("memory_caching")


def test_our_layer_equals_the_memory_caching_package_where_its_rule_is_ours():
    import torch

    try:
        bench.package()
    except ImportError:
        pytest.skip("the optional memory-caching package is not installed")
    x = torch.randn(1, 150, bench.PKG["d_model"], dtype=torch.float64)
    for theirs_name, ours_name in bench.AGGREGATIONS.items():
        theirs = bench.package_layer(theirs_name, "checkpoint", torch.float64)
        torch.testing.assert_close(bench.Ours(theirs, ours_name, "checkpoint").double()(x), theirs(x))


def test_niah_section_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_NIAH", dict(bench.QUICK_NIAH, steps=2, lengths=[256], n=2,
                                                  variants=["base", "log"]))
    data = {"niah": bench.section_niah(True)}
    assert [r["variant"] for r in data["niah"]["rows"]] == ["base", "log"]
    out = tmp_path / "mc.md"
    out.write_text("old tables\n" + bench.NOTES_MARK + "\nmy notes\n")
    assert bench.plot(data, out.with_suffix(".png"))
    bench.write_markdown(out, data, figure="mc.png")
    text = out.read_text()
    assert "| base |" in text and "![Memory Caching](mc.png)" in text and text.endswith("my notes\n")
    assert "old tables" not in text


def test_recall_section_labels_every_variant(monkeypatch):
    import recall

    monkeypatch.setattr(bench, "QUICK_RECALL", dict(bench.QUICK_RECALL, variants=["base", "sparse", "log"], steps=2,
                                                    workers=1))
    monkeypatch.setattr(recall, "PROTOCOL", dict(recall.PROTOCOL, batch_size=2, eval_examples=2))
    monkeypatch.setattr(recall, "TEST_CELLS", [(64, 4)])
    section = bench.section_recall(True)
    assert [r["variant"] for r in section["runs"]] == ["base", "sparse", "log"]
    assert section["protocol"]["steps"] == 2 and all(0 <= r["accuracy"]["64:4"] <= 1 for r in section["runs"])
    assert "steps, learner=gd)" in bench.markdown({"recall": section})
