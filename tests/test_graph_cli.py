"""``nestedmemory graph train`` / ``graph eval`` (issue 16): a run folder per model on tiny synthetic tasks, the graph
atlas, karate, Les Misérables and PyG datasets from a path (a saved file, a TU folder) that ``graph eval``
reproduces; resume is exact (from a Ctrl-C within an epoch, and branched from an epoch's checkpoint); bad flags,
data and checkpoints give one line and exit status 2 before anything is written; a NaN step stops the run and leaves
the checkpoints as they were. Tiny models (width 8, one layer) on a few small graphs keep the file to seconds."""

import json

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("networkx")

from checks import ctrl_c_before_step, one_line_command_error, printed_resume_command
from nestedmemory.cli import main  # noqa: E402
from nestedmemory.graphs import tasks  # noqa: E402
from nestedmemory.graphs import train as graph_train  # noqa: E402
from nestedmemory.train import checkpoint, metrics  # noqa: E402

TINY = ["--hidden", "8", "--layers", "1", "--heads", "2", "--train_graphs", "16", "--val_graphs", "8",
        "--test_graphs", "8", "--min_nodes", "6", "--max_nodes", "10", "--batch_size", "8", "--epochs", "2",
        "--progress", "false"]
RUNS = {
    "gsm++ on cycle check": ["--task", "cycle", "--mixer", "attention"],
    "gsm++ (mamba2, k-hop) on colour counting": ["--task", "colors", "--mixer", "mamba2", "--tokenization", "khop"],
    "gps on karate": ["--task", "karate", "--model", "gps"],
    "gatedgcn on shortest paths": ["--task", "shortest_path", "--model", "gatedgcn", "--pe", "false"],
    "gsm++ on les misérables": ["--task", "lesmis", "--tokenization", "khop", "--pool", "sum"],
    "gsm++ on the graph atlas": ["--task", "degree", "--family", "atlas", "--min_nodes", "5", "--max_nodes", "7"],
    "gsm++ on long-range connectivity": ["--task", "connectivity", "--family", "forest", "--min_nodes", "12",
                                         "--max_nodes", "16"],
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
    (["--family", "moon"], "--family: unknown graph family 'moon'"),
    (["--pool", "max"], "--pool: unknown token pooling 'max'"),
    (["--family", "atlas"], "--family atlas has graphs of at most 7 nodes"),
    (["--task", "pyg"], "--task pyg needs --data PATH"),
    (["--data", "INPUTS"], "--data PATH goes with --task pyg"),
    (["--task", "pyg", "--data", "INPUTS/nowhere.pt"], "no such file or folder"),
    (["--task", "pyg", "--data", "INPUTS/garbage.pt"], "is not a PyG dataset file"),
    (["--task", "pyg", "--data", "INPUTS/empty_tu"], "is not a TU-format folder"),
    (["--resume", "INPUTS/nowhere"], "not found"),
])
def test_bad_flags_give_one_line_and_write_nothing(flags, message, tmp_path, capsys):
    run, inputs = tmp_path / "run", tmp_path / "inputs"
    (inputs / "empty_tu").mkdir(parents=True)
    (inputs / "garbage.pt").write_bytes(b"not a dataset")
    flags = [flag.replace("INPUTS", str(inputs)) for flag in flags]
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


# ------------------------------------------------------------------ data from a path
def tu_folder(folder, graphs: int = 12):
    """A TU-format dataset (TUDataset's raw files): paths of 4 + i % 3 nodes, graph label i % 2."""
    folder.mkdir()
    edges, indicator, labels, first = [], [], [], 1
    for i in range(graphs):
        n = 4 + i % 3
        indicator += [i + 1] * n
        edges += [(first + j, first + j + 1) for j in range(n - 1)] + [(first + j + 1, first + j) for j in range(n - 1)]
        labels.append(i % 2)
        first += n
    (folder / "TOY_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (folder / "TOY_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (folder / "TOY_graph_labels.txt").write_text("".join(f"{y}\n" for y in labels))
    return folder


def test_pyg_datasets_from_a_path_train_and_evaluate(tmp_path, capsys):
    """A saved ``InMemoryDataset`` (graph regression, two targets), one saved graph with its own masks (node
    classification) and a TU folder (graph classification) train and evaluate; their tasks are what the targets say."""
    from torch_geometric.data import Data, InMemoryDataset

    generator = torch.Generator().manual_seed(0)
    ring = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    graphs = [Data(x=torch.randn(6, 3, generator=generator), edge_index=torch.cat([ring, ring.flip(0)], 1),
                   y=torch.randn(1, 2, generator=generator)) for _ in range(20)]
    InMemoryDataset.save(graphs, str(tmp_path / "regression.pt"))
    n = 30
    masks = torch.arange(n) % 3
    one = Data(x=torch.randn(n, 4, generator=generator), edge_index=torch.randint(0, n, (2, 80), generator=generator),
               y=torch.arange(n) % 3, train_mask=masks == 0, val_mask=masks == 1, test_mask=masks == 2)
    InMemoryDataset.save([one], str(tmp_path / "nodes.pt"))
    expected = {"regression.pt": ("graph", "regress", 2), "nodes.pt": ("node", "classify", 3),
                "tu": ("graph", "classify", 2)}
    tu_folder(tmp_path / "tu")
    for name, (level, kind, outputs) in expected.items():
        task, splits = tasks.make_task("pyg", data=str(tmp_path / name))
        assert (task.level, task.kind, task.outputs) == (level, kind, outputs), name
        run = tmp_path / f"run-{name}"
        assert main(["graph", "train", *TINY, "--task", "pyg", "--data", str(tmp_path / name), "--out", str(run)]) == 0
        assert main(["graph", "eval", str(run)]) == 0
        assert json.loads((run / "eval.json").read_text())["loss"] == pytest.approx(
            json.loads((run / "results.json").read_text())["loss"], rel=1e-6)
    task, splits = tasks.make_task("pyg", data=str(tmp_path / "nodes.pt"))
    assert [int(splits[s][0].mask.sum()) for s in tasks.SPLITS] == [10, 10, 10]


# ------------------------------------------------------------------ resume
def records(run) -> list[dict]:
    return metrics.read(run / metrics.METRICS)


def test_resume_continues_exactly(tmp_path, capsys, monkeypatch):
    """From a Ctrl-C in the middle of epoch 1 (resumed with the command the run prints) and branched into a new
    folder from the whole run's epoch-1 checkpoint, the records, weights and test results are those of the
    uninterrupted run, bit for bit; a resume that changes what the run computes is refused in one line."""
    flags = [*TINY, "--task", "cycle", "--tokenization", "random", "--train_graphs", "24"]  # random order: RNG draws
    whole = tmp_path / "whole"
    assert main(["graph", "train", *flags, "--out", str(whole)]) == 0

    ctrl_c_before_step(monkeypatch, graph_train.Trainer, 1)  # in step 2: it finishes, a checkpoint is written
    ctrl_c = tmp_path / "ctrl_c"
    capsys.readouterr()
    assert main(["graph", "train", *flags, "--out", str(ctrl_c)]) == 130
    monkeypatch.undo()
    assert [p.name for p in checkpoint.checkpoints(ctrl_c)] == ["checkpoint-000002"] and not records(ctrl_c)
    argv = printed_resume_command(capsys)
    assert argv == ["graph", "train", "--resume", str(ctrl_c)]
    assert main(argv) == 0

    branch = tmp_path / "branch"
    first_epoch = checkpoint.checkpoints(whole)[0]
    assert main(["graph", "train", "--resume", str(first_epoch), "--out", str(branch)]) == 0
    whole_weights = checkpoint.trainer_state(checkpoint.resolve(whole))["weights"]
    for run in (ctrl_c, branch):
        assert records(run) == records(whole)
        assert json.loads((run / "results.json").read_text()) == json.loads((whole / "results.json").read_text())
        weights = checkpoint.trainer_state(checkpoint.resolve(run))["weights"]
        assert all(torch.equal(t, whole_weights[k]) for k, t in weights.items())
    refused = one_line_error(capsys, ["graph", "train", "--resume", str(ctrl_c), "--lr", "1e-3"])
    assert "incompatible config" in refused and "lr: 0.003 → 0.001" in refused
    refused = one_line_error(capsys, ["graph", "train", "--resume", str(first_epoch)])
    assert "is not the newest checkpoint" in refused
