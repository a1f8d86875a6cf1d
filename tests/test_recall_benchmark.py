"""benchmarks/recall.py's machinery on a micro configuration (a few seconds): runs are reproducible, reports are
written from the JSON and keep the hand-written notes, and the width overrides reach the polynomial presets."""

import json

import pytest

from checks import load_benchmark

recall = load_benchmark("recall")

MICRO = ["--train-mix", "8:1:3", "16:2:1", "--test-cells", "8:1", "16:2", "--widths", "32", "--seeds", "0", "1",
         "--steps", "2", "--batch-size", "4", "--vocab-size", "16", "--eval-examples", "8"]


def micro_job(preset="deltanet", **changes):
    return dict(dict(preset=preset, width=32, seed=0, vocab_size=16, batch_size=4, lr=3e-3, steps=2, eval_examples=8,
                     train_mix=[[8, 1, 3], [16, 2, 1]], test_cells=[[8, 1], [16, 2]]), **changes)


def test_a_run_is_reproducible_and_recorded():
    first, second = recall.run_one(micro_job()), recall.run_one(micro_job())
    for key in ("accuracy", "final_loss", "parameters", "state"):
        assert first[key] == second[key]
    assert set(first["accuracy"]) == {"8:1", "16:2"} and all(0 <= a <= 1 for a in first["accuracy"].values())
    assert first["diverged_at"] is None
    assert first["state"] == 2 * 4 * 8 * 8  # two layers of 4 heads of 8 x 8 matrix memories


def test_the_mixture_draws_its_cells_by_weight_and_seed():
    mixture = recall.Mixture([(8, 1, 3), (16, 2, 1)])
    lengths = [mixture.generate(2, seed=seed, vocab_size=16)["input_ids"].shape[1] for seed in range(400)]
    assert set(lengths) == {8, 16} and 0.65 < lengths.count(8) / 400 < 0.85
    again = mixture.generate(2, seed=7, vocab_size=16)["input_ids"]
    assert (again == mixture.generate(2, seed=7, vocab_size=16)["input_ids"]).all()
    assert mixture.mean_length() == 10


def test_memory_options_reach_the_layer():
    record = recall.run_one(micro_job(memory={"lr_init": 0.5, "lr_max": 1.0}))
    assert record["memory"] == {"lr_init": 0.5, "lr_max": 1.0}
    config = recall.model_config("deltanet", 32, 16, {"lr_init": 0.5, "lr_max": 1.0})
    assert config["memory"]["learner"] == "dgd" and config["memory"]["lr_max"] == 1.0
    assert recall.parse_variant("titans-lmm:residual=false,lr_max=1") == ("titans-lmm", {"residual": False,
                                                                                         "lr_max": 1})


def test_polynomial_presets_follow_the_width():
    assert recall.model_config("omeganet", 128, 64)["memory_heads"] == 16
    assert "memory_heads" not in recall.model_config("deltanet", 128, 64)


def test_the_command_writes_markdown_json_and_plot_and_keeps_notes(tmp_path):
    out = tmp_path / "recall.md"
    recall.main(MICRO + ["--presets", "transformer++", "deltanet", "--out", str(out)])
    out.write_text(out.read_text() + "my analysis\n")
    recall.main(MICRO + ["--variants", "deltanet:lr_max=1", "--section", "probe", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["sections"]) == {"sweep", "probe"}
    assert len(data["sections"]["sweep"]["runs"]) == 4 and len(data["sections"]["probe"]["runs"]) == 2
    text = out.read_text()
    assert text.endswith(recall.NOTES_MARK + "\nmy analysis\n")
    assert "deltanet (lr_max=1)" in text and "transformer++ > deltanet" in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_bad_variants_are_refused():
    for spec in ("deltanet", "nosuchpreset:lr_max=1"):
        with pytest.raises(SystemExit):
            recall.parse_variant(spec)


def test_a_learning_curve_leaves_the_run_unchanged():
    plain, traced = recall.run_one(micro_job(steps=4)), recall.run_one(micro_job(steps=4, curve_every=2))
    assert plain["accuracy"] == traced["accuracy"] and plain["final_loss"] == traced["final_loss"]
    assert [point["step"] for point in traced["curve"]] == [2] and "curve" not in plain
