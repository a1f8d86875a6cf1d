"""``nestedmemory graph train`` / ``graph eval`` (issue 16): a run folder per model on tiny synthetic tasks and karate
that ``graph eval`` reproduces; bad flags and checkpoints give one line and exit status 2 before anything is
written; a NaN step stops the run and leaves the checkpoints as they were. Tiny models (width 8, one layer) on a
few small graphs keep the file to seconds."""

import json

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("networkx")

from checks import one_line_command_error
from nestedmemory.cli import main  # noqa: E402
from nestedmemory.graphs import tasks  # noqa: E402
from nestedmemory.train import checkpoint, metrics  # noqa: E402

TINY = ["--hidden", "8", "--layers", "1", "--heads", "2", "--train_graphs", "16", "--val_graphs", "8",
        "--test_graphs", "8", "--min_nodes", "6", "--max_nodes", "10", "--batch_size", "8", "--epochs", "2",
        "--progress", "false"]
RUNS = {
    "gsm++ on cycle check": ["--task", "cycle", "--mixer", "attention"],
    "gsm++ (mamba2, k-hop) on colour counting": ["--task", "colors", "--mixer", "mamba2", "--tokenization", "khop"],
    "gps on karate": ["--task", "karate", "--model", "gps"],
    "gatedgcn on shortest paths": ["--task", "shortest_path", "--model", "gatedgcn", "--pe", "false"],
}


def one_line_error(capsys, argv, command="graph train") -> str:
    return one_line_command_error(capsys, argv, command)


@pytest.mark.parametrize("name", list(RUNS))
def test_train_writes_the_run_folder_and_eval_reproduces_its_results(name, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["graph", "train", *TINY, *RUNS[name], "--out", str(run)]) == 0
    for file in ("config.yaml", "metrics.jsonl", "loss.png", "results.json", "config.json", "model.safetensors"):
        assert (run / file).stat().st_size > 0, file
    records = metrics.read(run / metrics.METRICS)
    assert [r["epoch"] for r in records] == [1, 2]
    assert [p.name for p in checkpoint.checkpoints(run)] == [checkpoint.checkpoint_name(r["step"]) for r in records]
    results = json.loads((run / "results.json").read_text())
    assert results["headline"] in results and results["epochs"] == 2
    capsys.readouterr()
    assert main(["graph", "eval", str(run)]) == 0
    assert "written to" in capsys.readouterr().out
    evaluated = json.loads((run / "eval.json").read_text())
    for key in ("loss", "accuracy", "rmse"):
        if key in results:
            assert evaluated[key] == pytest.approx(results[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("flags, message", [
    (["--task", "degrees"], "--task: unknown task 'degrees'; did you mean 'degree'?"),
    (["--model", "gcn"], "--model: unknown model 'gcn'"),
    (["--mixer", "lstm"], "--mixer: unknown mixer 'lstm'"),
    (["--tokenization", "bfs"], "--tokenization: unknown tokenization 'bfs'"),
    (["--local", "gin"], "--local: unknown local MPNN 'gin'"),
    (["--norm", "group_norm"], "--norm: unknown norm 'group_norm'"),
    (["--hidden", "0"], "--hidden must be >= 1, got 0"),
    (["--lr", "-1"], "--lr must be > 0, got -1"),
    (["--min_nodes", "3"], "--min_nodes must be >= 5, got 3"),
    (["--min_nodes", "12", "--max_nodes", "10"], "--max_nodes 10 is below --min_nodes 12"),
    (["--heads", "3"], "--heads 3 must divide --hidden 8"),
    (["--device", "cuda:7"], "--device: device 'cuda:7' is not available"),
    (["--epochs", "many"], "epochs"),
])
def test_bad_flags_give_one_line_and_write_nothing(flags, message, tmp_path, capsys):
    run = tmp_path / "run"
    err = one_line_error(capsys, ["graph", "train", *TINY, *flags, "--out", str(run)])
    assert message in err
    assert not run.exists()


def test_a_used_run_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert "run folder" in one_line_error(capsys, ["graph", "train", *TINY, "--out", str(run)])
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_eval_of_a_missing_or_foreign_checkpoint_gives_one_line(tmp_path, capsys):
    assert "not found" in one_line_error(capsys, ["graph", "eval", str(tmp_path / "none")], "graph eval")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / checkpoint.WEIGHTS).write_bytes(b"not safetensors")
    (foreign / checkpoint.STATE).write_bytes(b"")
    one_line_error(capsys, ["graph", "eval", str(foreign)], "graph eval")


def test_a_nan_step_stops_the_run_and_keeps_the_checkpoints(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    loss, calls = tasks.GraphTask.loss, []

    def poisoned(self, out, target):  # training steps: finite in the first epoch (2 steps), NaN after
        calls.extend([1] * torch.is_grad_enabled())
        value = loss(self, out, target)
        return value * torch.nan if len(calls) > 2 else value

    monkeypatch.setattr(tasks.GraphTask, "loss", poisoned)
    err = one_line_error(capsys, ["graph", "train", *TINY, "--task", "cycle", "--epochs", "3", "--out", str(run)])
    assert "the loss is nan" in err and "checkpoint-000002, is the last finite state" in err
    saved = checkpoint.checkpoints(run)
    assert [p.name for p in saved] == ["checkpoint-000002"]
    weights, state = checkpoint.load(saved[0])
    assert all(torch.isfinite(t).all() for t in [*weights.values(), *state["weights"].values()])
    assert not (run / "results.json").exists()


def test_karate_split_is_stratified_and_regression_targets_are_standardised():
    task, splits = tasks.make_task("karate", seed=1)
    masks = torch.stack([splits[s][0].mask for s in tasks.SPLITS])
    assert (masks.sum(0) == 1).all() and task.level == "node" and task.outputs == 2
    y = splits["train"][0].y
    for club in (0, 1):  # half of each club trains, a quarter validates, a quarter tests
        sizes = [int((m & (y == club)).sum()) for m in masks]
        assert abs(sizes[0] - sizes[1] - sizes[2]) <= 1 and abs(sizes[1] - sizes[2]) <= 1
    task, splits = tasks.make_task("colors", dict(train=8, val=1, test=1), num_nodes=(6, 8))
    values = torch.cat([g.y.double() for g in splits["train"]])
    assert task.outputs == 3 and task.shift == pytest.approx(values.mean().item())
    standardised = (values - task.shift) / task.scale
    torch.testing.assert_close(task.prediction(standardised), values)
    assert task.scores(standardised, values)["rmse"] < 1e-9 and task.scores(standardised, values)["accuracy"] == 1
