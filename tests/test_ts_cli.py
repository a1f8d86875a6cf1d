"""``nestedmemory ts train`` / ``ts eval`` (issue 15): a run folder per task (forecast on a small TSLib CSV,
classification on the synthetic lead/lag set, anomaly detection on the synthetic anomaly set) that ``ts eval``
reproduces; resume is exact (from an epoch's end and from a Ctrl-C within an epoch); bad flags, data and
checkpoints give one line and exit status 2 before anything is written; a NaN or infinite step stops the run and
leaves the checkpoints as they were. Tiny models (the channel-independent ``mamba2`` preset, width 8, one layer)
and a few steps keep the file to seconds."""

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from checks import ctrl_c_before_step, one_line_command_error, printed_resume_command
from nestedmemory.cli import main
from nestedmemory.timeseries import train as ts
from nestedmemory.timeseries.synthetic import synthetic_anomaly, synthetic_ett
from nestedmemory.train import checkpoint, metrics

TINY = ["--model", "mamba2", "--dim", "8", "--layers", "1", "--progress", "false"]
#: per task: the flags of a tiny run (the forecast's ``DATA`` is the CSV of the ``csv`` fixture).
TASKS = {
    "forecast": [*TINY, "--data", "DATA", "--seq_len", "16", "--label_len", "8", "--pred_len", "8", "--patch_len", "4",
                 "--stride", "4", "--batch_size", "32"],
    "classify": [*TINY, "--task", "classify", "--synthetic_size", "64", "--patch_len", "8", "--stride", "8",
                 "--batch_size", "16", "--lr", "1e-3"],
    "anomaly": [*TINY, "--task", "anomaly", "--synthetic_size", "400", "--win_size", "20", "--patch_len", "4",
                "--stride", "4", "--batch_size", "64", "--lr", "1e-3"],
}
METRICS = {"forecast": ["mse", "mae", "rmse"], "classify": ["accuracy"],
           "anomaly": ["threshold", "f1", "precision", "recall", "f1_pa", "precision_pa", "recall_pa"]}


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    """A 300-row synthetic ETT table as a TSLib CSV (custom split: 210 / 30 / 60 rows)."""
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    synthetic_ett(300).to_csv(path, index=False)
    return path


def flags(task: str, csv) -> list[str]:
    return [str(csv) if arg == "DATA" else arg for arg in TASKS[task]]


def records(run) -> list[dict]:
    return metrics.read(run / metrics.METRICS)


def one_line_error(capsys, argv, command="ts train") -> str:
    return one_line_command_error(capsys, argv, command)


@pytest.fixture(scope="module")
def forecast_run(csv, tmp_path_factory):
    """A finished 2-epoch forecast run (6 steps an epoch)."""
    run = tmp_path_factory.mktemp("forecast") / "run"
    assert main(["ts", "train", *flags("forecast", csv), "--epochs", "2", "--out", str(run)]) == 0
    return run


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("task", list(TASKS))
def test_train_writes_the_run_folder_and_eval_reproduces_its_results(task, csv, forecast_run, tmp_path, capsys):
    run = forecast_run
    if task != "forecast":
        run = tmp_path / "run"
        assert main(["ts", "train", *flags(task, csv), "--epochs", "2", "--out", str(run)]) == 0
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "results.json", "config.json", "model.safetensors",
                 *[ts.PLOTS.get(task)] * (task in ts.PLOTS)):
        assert (run / name).stat().st_size > 0, name
    assert [p.name for p in checkpoint.checkpoints(run)] == [f"checkpoint-{s:06d}" for s in
                                                              (r["step"] for r in records(run))]
    assert {"epoch", "step", "lr", "loss", "val_loss", "test_loss", "best_epoch"} <= set(records(run)[0])
    assert [r["epoch"] for r in records(run)] == [1, 2]
    results = json.loads((run / "results.json").read_text())
    assert set(METRICS[task]) <= set(results) and results["task"] == task
    if task == "forecast":
        assert (results["seq_len"], results["pred_len"], results["windows"]) == (16, 8, 60 + 16 - 16 - 8 + 1)
        assert results["mse"] == records(run)[results["best_epoch"] - 1]["test_loss"]  # the best model is tested
    capsys.readouterr()
    assert main(["ts", "eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {k: evaluated[k] for k in METRICS[task]} == {k: results[k] for k in METRICS[task]}
    assert all(name in printed for name in METRICS[task]) and "mamba2" in printed


@pytest.mark.parametrize("model", ["chimera", "hydra", "tsm2"])
def test_the_channel_mixing_models_train_and_test(model, csv, tmp_path):
    """Chimera, Hydra and TSM2 through the same loop (two steps, width 16: Chimera's two head groups)."""
    run = tmp_path / "run"
    argv = [*flags("forecast", csv), "--model", model, "--dim", "16", "--max_steps", "2", "--out", str(run)]
    assert main(["ts", "train", *argv]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["model"] == model and results["steps"] == 2 and results["mse"] > 0


def write_ts(path, cases: int, seed: int) -> None:
    """A UEA ``.ts`` file: ``cases`` two-dimensional series of 12 steps, class ``a`` rising, ``b`` falling."""
    generator = torch.Generator().manual_seed(seed)
    lines = ["@problemName Toy", "@univariate false", "@dimensions 2", "@equalLength true", "@seriesLength 12",
             "@classLabel true a b", "@data"]
    for i in range(cases):
        label = "ab"[i % 2]
        trend = torch.linspace(-1, 1, 12) * (1 if label == "a" else -1)
        dims = [trend + 0.1 * torch.randn(12, generator=generator) for _ in range(2)]
        lines.append(":".join(",".join(f"{v:.4f}" for v in dim.tolist()) for dim in dims) + f":{label}")
    path.write_text("\n".join(lines) + "\n")


def test_anomaly_reads_a_timeeval_csv_from_a_path(tmp_path):
    """One labelled series (a Daphnet-like TimeEval file: timestamp, values…, is_anomaly), split in time."""
    train, test, labels = synthetic_anomaly(400)
    values = np.concatenate([train, test])
    frame = pd.DataFrame(values, columns=[f"v{i}" for i in range(values.shape[1])])
    frame.insert(0, "timestamp", np.arange(len(values)))
    frame["is_anomaly"] = np.concatenate([np.zeros(len(train), dtype=int), labels])
    path = tmp_path / "recording.csv"
    frame.to_csv(path, index=False)
    run = tmp_path / "run"
    flags = [arg for arg in TASKS["anomaly"] if arg not in ("--synthetic_size", "400")]
    assert main(["ts", "train", *flags, "--data", str(path), "--epochs", "1", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["data"] == str(path) and 0 <= results["f1"] <= results["f1_pa"] <= 1


def test_classify_reads_a_uea_ts_pair(tmp_path, capsys):
    """``--data X_TRAIN.ts`` reads ``X_TEST.ts`` beside it; validation is held out of the training file."""
    write_ts(tmp_path / "Toy_TRAIN.ts", 20, 0)
    write_ts(tmp_path / "Toy_TEST.ts", 10, 1)
    run = tmp_path / "run"
    argv = [*TINY, "--task", "classify", "--data", str(tmp_path / "Toy_TRAIN.ts"), "--patch_len", "4", "--stride", "4",
            "--batch_size", "8", "--epochs", "1", "--val_fraction", "0.2", "--out", str(run)]
    assert main(["ts", "train", *argv]) == 0
    results = json.loads((run / "results.json").read_text())
    assert (results["cases"], results["seq_len"]) == (10, 12) and 0 <= results["accuracy"] <= 1
    assert "train / val / test items: 16 / 4 / 10" in capsys.readouterr().out
    (tmp_path / "Toy_TEST.ts").unlink()
    assert "no such file" in one_line_error(capsys, ["ts", "train", *argv[:-2], "--out", str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()


def test_lr_schedules_replay_tslib():
    """``adjust_learning_rate(…, epoch + 1)`` after every epoch (type1: lr of epochs 1, 2, 3 = lr, lr, lr/2;
    classification adjusts after every 5th epoch only)."""
    config = ts.TSTrainConfig(model="mamba2", lr=1e-3)
    assert [ts.lr_at(config, e) for e in range(4)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    type2 = ts.TSTrainConfig(model="mamba2", lradj="type2")
    assert [ts.lr_at(type2, e) for e in range(5)] == [1e-4, 1e-4, 5e-5, 5e-5, 1e-5]
    classify = ts.TSTrainConfig(model="mamba2", task="classify", lr=1e-3)
    assert [ts.lr_at(classify, e) for e in (4, 5, 10)] == [1e-3, 1e-3 * 0.5 ** 4, 1e-3 * 0.5 ** 9]


# ------------------------------------------------------------------ resume
def test_resume_continues_exactly(csv, forecast_run, tmp_path, capsys, monkeypatch):
    """From an epoch's end (``--epochs 1``, then ``--resume --epochs 2``) and from a Ctrl-C within epoch 1 (resumed
    with the command the run prints), the records, checkpoints and test results are those of the uninterrupted
    run, bit for bit."""
    whole = forecast_run
    epoch_end = tmp_path / "epoch_end"
    assert main(["ts", "train", *flags("forecast", csv), "--epochs", "1", "--out", str(epoch_end)]) == 0
    assert main(["ts", "train", "--resume", str(epoch_end), "--epochs", "2"]) == 0

    ctrl_c_before_step(monkeypatch, ts.Trainer, 1)  # in step 2: it finishes, a checkpoint is written
    ctrl_c = tmp_path / "ctrl_c"
    capsys.readouterr()
    assert main(["ts", "train", *flags("forecast", csv), "--epochs", "2", "--out", str(ctrl_c)]) == 130
    monkeypatch.undo()
    assert [p.name for p in checkpoint.checkpoints(ctrl_c)] == ["checkpoint-000002"] and not records(ctrl_c)
    argv = printed_resume_command(capsys)
    assert argv == ["ts", "train", "--resume", str(ctrl_c)]
    assert main(argv) == 0

    results = json.loads((whole / "results.json").read_text())
    for run in (epoch_end, ctrl_c):
        assert records(run) == records(whole)
        again = json.loads((run / "results.json").read_text())
        assert {k: again[k] for k in METRICS["forecast"]} == {k: results[k] for k in METRICS["forecast"]}
        state = checkpoint.trainer_state(checkpoint.resolve(run))
        assert all(torch.equal(t, checkpoint.trainer_state(checkpoint.resolve(whole))["weights"][k])
                   for k, t in state["weights"].items())
    refused = one_line_error(capsys, ["ts", "train", "--resume", str(ctrl_c), "--lr", "1e-3"])
    assert "incompatible config" in refused and "lr: 0.0001 → 0.001" in refused


# ------------------------------------------------------------------ non-finite
def file_hashes(run) -> dict:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in checkpoint.checkpoints(run) for p in folder.iterdir()}


def test_nonfinite_step_stops_and_leaves_the_checkpoints_untouched(forecast_run, tmp_path, capsys, monkeypatch):
    """A NaN loss in step 13 (epoch 3 of a resumed run) stops it with one line naming the step and the last finite
    checkpoint; the checkpoints and records of epochs 1-2 are unchanged and nothing newer is written."""
    run = tmp_path / "run"
    shutil.copytree(forecast_run, run, symlinks=True)
    before, kept = file_hashes(run), records(run)
    loss_of = ts.loss_of

    def poisoned(config, prediction, target):
        return loss_of(config, prediction, target) * float("nan")

    monkeypatch.setattr(ts, "loss_of", poisoned)
    err = one_line_error(capsys, ["ts", "train", "--resume", str(run), "--epochs", "3"])
    assert "step 13 (epoch 3): the loss is nan" in err and "checkpoint-000012, is the last finite state" in err
    assert file_hashes(run) == before and records(run) == kept
    assert not (run / "train.lock").exists()


def test_a_diverging_run_writes_no_checkpoint(csv, tmp_path, capsys):
    """lr 1e30: the first update is finite, the next loss is not; no checkpoint holds the diverged weights."""
    run = tmp_path / "run"
    err = one_line_error(capsys, ["ts", "train", *flags("forecast", csv), "--lr", "1e30", "--out", str(run)])
    assert "not finite" in err or "is nan" in err or "is inf" in err, err
    assert "no checkpoint was written" in err and not checkpoint.checkpoints(run)


# ------------------------------------------------------------------ bad input
#: a tiny CSV run; with a bad model setting, found once the data are read (and still before anything is written).
SMALL = ["--data", "INPUTS/tiny.csv", "--model", "mamba2", "--seq_len", "16", "--label_len", "8", "--pred_len", "8"]
#: (argv after ``ts train``, a fragment of the error); INPUTS/ is a folder of prepared files.
BAD = [
    (["--seq_len", "-1"], "--seq_len must be >= 1, got -1"),
    (["--pred_len", "0"], "--pred_len must be >= 1, got 0"),
    (["--label_len", "-2"], "--label_len must be >= 0, got -2"),
    (["--dim", "0"], "--dim must be >= 1, got 0"),
    (["--layers", "0"], "--layers must be >= 1, got 0"),
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--max_steps", "0"], "--max_steps must be >= 1, got 0"),
    (["--synthetic_size", "-5"], "--synthetic_size must be >= 1, got -5"),
    (["--anomaly_ratio", "100"], "--anomaly_ratio must be below 100"),
    (["--label_len", "20", "--seq_len", "16"], "--label_len 20 is longer than --seq_len 16"),
    (["--pred_len"], "expected one argument"),
    (["--model", "chimra"], "--model: unknown model 'chimra'; did you mean 'chimera'?"),
    (["--task", "forcast"], "--task: unknown task 'forcast'; did you mean 'forecast'?"),
    (["--layout", "ETTx"], "--layout: unknown layout 'ETTx'"),
    (["--features", "MM"], "--features: unknown features mode 'MM'"),
    (["--lradj", "type9"], "--lradj: unknown schedule 'type9'"),
    (["--device", "cuda:99"], "--device: device 'cuda:99' is not available"),
    (["--data", "INPUTS/missing.csv"], "--data INPUTS/missing.csv: no such file"),
    (["--data", "INPUTS/bad.csv"], "INPUTS/bad.csv: non-numeric value 'abc' in column 'OT' at row 3"),
    (["--data", "INPUTS/tiny.csv", "--seq_len", "400", "--label_len", "8"], "fewer than seq_len=400"),
    ([*SMALL, "--patch_len", "32"], "--seq_len 16 is shorter than --patch_len 32"),
    ([*SMALL, "--options", "{no_such: 1}"], "unknown option 'no_such'"),
    (["--task", "classify", "--data", "NoSuchSet"], "UEA set 'NoSuchSet' not found"),
    (["--task", "anomaly", "--data", "nope"], "--data: unknown anomaly set 'nope'"),
    (["--task", "anomaly", "--data", "INPUTS/missing.csv"], "--data INPUTS/missing.csv: no such file"),
    (["--out", "INPUTS/tiny.csv"], "--out INPUTS/tiny.csv is a file"),
    (["--resume", "INPUTS/nowhere"], "checkpoint not found"),
]


@pytest.fixture
def inputs(tmp_path, csv):
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(csv, folder / "tiny.csv")
    lines = csv.read_text().splitlines()[:40]
    lines[3] = lines[3].rsplit(",", 1)[0] + ",abc"
    (folder / "bad.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_bad_input_gives_one_line_and_writes_nothing(argv, message, inputs, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(inputs.iterdir())
    argv = [arg.replace("INPUTS/", f"{inputs}/") for arg in argv]
    err = one_line_error(capsys, ["ts", "train", *argv])
    assert message.replace("INPUTS/", f"{inputs}/") in err, err
    assert not any(cwd.iterdir()) and sorted(inputs.iterdir()) == before


def test_eval_refuses_missing_truncated_and_foreign_checkpoints(forecast_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(forecast_run, run, symlinks=True)
    newest = checkpoint.resolve(run)
    assert "checkpoint not found" in one_line_error(capsys, ["ts", "eval", str(tmp_path / "nowhere")], "ts eval")
    assert "--batch_size must be >= 1" in one_line_error(capsys, ["ts", "eval", str(run), "--batch_size", "0"],
                                                         "ts eval")
    weights = (newest / checkpoint.WEIGHTS).read_bytes()
    (newest / checkpoint.WEIGHTS).write_bytes(weights[:len(weights) // 2])
    assert "corrupt or truncated" in one_line_error(capsys, ["ts", "eval", str(run)], "ts eval")
    (newest / checkpoint.WEIGHTS).write_bytes(weights)
    state = checkpoint.trainer_state(newest)
    torch.save(dict(state, config={"model": {"preset": "hope"}}), newest / checkpoint.STATE)  # a language model's
    assert "is not a checkpoint of a time-series run" in one_line_error(capsys, ["ts", "eval", str(run)], "ts eval")
    (newest / checkpoint.STATE).unlink()
    assert "trainer_state.pt is missing" in one_line_error(capsys, ["ts", "eval", str(run)], "ts eval")
    assert not (run / "eval.json").exists()
