"""The ``nestedmemory`` command: the README's main command end to end, one-line errors, generate, eval, bench."""

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from nestedmemory.cli import main, underscored
from nestedmemory.models import from_preset
from nestedmemory.tasks import SUITES
from nestedmemory.train import DEFAULT_PRESET
from nestedmemory.train.loop import Trainer

#: the README's ``nestedmemory train``, shrunk to a few seconds.
SMALL = ["--model.size", "tiny", "--batch-size", "4", "--data.seq-len", "32", "--data.val-tokens", "512",
         "--sample.max-new-tokens", "8", "--progress", "false"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def command(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nestedmemory", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *SMALL, "--max-steps", "3", "--out", str(out)]) == 0
    return out


def test_readme_train_command_end_to_end(tmp_path):
    result = command("train", "--max-steps", "20", "--eval-every", "10", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith(f"{DEFAULT_PRESET}-tiny-")
    final = run_dir / "checkpoint-000020"
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "sample.txt", "checkpoint-000020/model.safetensors",
                 "checkpoint-000020/config.json", "checkpoint-000020/trainer_state.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    assert "validation loss" in result.stdout and "unigram baseline" in result.stdout and "ROMEO:" in result.stdout
    assert "Traceback" not in result.stderr and final.is_dir()


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = command("train", "--model.preset", "no-such-model", *SMALL, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown preset 'no-such-model'" in result.stderr and not any(tmp_path.iterdir())


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_one_line_errors(run, tmp_path, capsys):
    assert "data file not found" in one_line_error(capsys, ["train", "--data.path", str(tmp_path / "x.txt")])
    resume = ["train", *SMALL, "--resume", str(run)]
    assert "incompatible config" in one_line_error(capsys, [*resume, "--seed", "1"])
    assert "checkpoint not found" in one_line_error(capsys, ["generate", str(tmp_path / "none")])
    weights = run / "checkpoint-000003" / "model.safetensors"
    good = weights.read_bytes()
    try:
        weights.write_bytes(good[: len(good) // 2])
        assert "corrupt or truncated" in one_line_error(capsys, [*resume, "--max-steps", "5"])
        assert weights.read_bytes() == good[: len(good) // 2]  # left as it was, nothing written
    finally:
        weights.write_bytes(good)
    assert "nothing to evaluate" in one_line_error(capsys, ["eval", str(run)])


def test_generate_from_run_checkpoint_and_saved_model(run, tmp_path, capsys):
    for source in (run, run / "checkpoint-000003"):
        assert main(["generate", str(source), "--prompt", "KING:", "--max-new-tokens", "12", "--seed", "1"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("KING:") and len(text.encode()) >= len("KING:") + 12
    model = from_preset("titans-lmm", "tiny")
    model.save_pretrained(tmp_path / "hf")
    assert main(["generate", str(tmp_path / "hf"), "--max-new-tokens", "5", "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main(["generate", str(tmp_path / "hf"), "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy
    # post-training Memory Caching (MC §3.4): the memories cache every 16 tokens, decoding reads their average
    assert main(["generate", str(tmp_path / "hf"), "--max-new-tokens", "40", "--caching_segment", "16"]) == 0
    assert len(capsys.readouterr().out.encode()) >= 40
    assert "multiple of the memory's chunk_size" in one_line_error(
        capsys, ["generate", str(tmp_path / "hf"), "--caching_segment", "12"])
    from_preset("transformer++", "tiny").save_pretrained(tmp_path / "attention")
    assert "no memory layer that can cache" in one_line_error(
        capsys, ["generate", str(tmp_path / "attention"), "--caching_segment", "8"])


def test_eval_perplexity_and_suite_table(run, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    argv = ["eval", str(run), "--data", str(text), "--seq-len", "64", "--suite", "mqar", "--n", "8",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["perplexity"]["tokens"] == len(text.read_bytes()) + 2 - 14  # + separator, − one per sequence
    assert 0 <= results["mqar"]["accuracy"] <= 1
    table = (tmp_path / "eval.md").read_text()
    assert "| perplexity | perplexity |" in table and "| mqar | accuracy |" in table
    assert "| mqar | accuracy |" in capsys.readouterr().out


def test_eval_runs_every_suite(run, tmp_path, capsys):
    assert main(["eval", str(run), "--suite", ",".join(SUITES), "--n", "1", "--batch-size", "2",
                 "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results) == set(SUITES) and all(0 <= results[name]["accuracy"] <= 1 for name in SUITES)
    assert len(results["mad"]["task"]) == 6  # the suite as a whole: each of the six MAD tasks


#: a run with settings far from the defaults (and tiny), logged every step.
CUSTOM = ["--model.size", "tiny", "--model.overrides", "{num_layers: 1}", "--batch-size", "2", "--data.seq-len", "16",
          "--data.val-tokens", "64", "--optim.lr", "1e-3", "--sample.max-new-tokens", "4", "--log-every", "1",
          "--progress", "false"]


def losses(run_dir) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], key): r[key] for r in records for key in ("loss", "val_loss") if key in r}


def test_resume_reuses_the_saved_settings_as_the_ctrl_c_hint_says(tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert main(["train", *CUSTOM, "--max-steps", "4", "--out", str(whole)]) == 0
    step = Trainer._train_step

    def ctrl_c_in_step_2(self, batch):
        if self.step == 1:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C: the run ends this step, saves and says how to resume
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", ctrl_c_in_step_2)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", *CUSTOM, "--max-steps", "4", "--out", str(run)]) == 130
    monkeypatch.undo()
    program, *argv = shlex.split(capsys.readouterr().out.split("resume with: ")[1].splitlines()[0])
    assert program == "nestedmemory" and argv == ["train", "--resume", str(run)]
    assert main(argv) == 0  # the hint, as printed
    assert losses(run) == losses(whole)  # bit for bit
    assert main(["train", "--resume", str(run), "--max-steps", "5", "--eval-every", "0"]) == 0  # flags override
    assert (run / "checkpoint-000005").is_dir()
    refused = one_line_error(capsys, ["train", "--resume", str(run), "--batch-size", "3"])
    assert "incompatible config" in refused and "batch_size: 2 → 3" in refused


def test_bench_throughput_and_scripts(capsys, tmp_path):
    assert main(["bench", "--size", "tiny", "--steps", "1", "--seq-len", "16", "--batch-size", "2"]) == 0
    assert "training tokens/s" in capsys.readouterr().out
    assert "unknown benchmark 'nope'" in one_line_error(capsys, ["bench", "nope"])


def test_info_config_files_and_dashes(tmp_path, capsys):
    assert main(["info"]) == 0
    assert "titans-lmm" in capsys.readouterr().out
    config = tmp_path / "small.yaml"
    config.write_text("max_steps: 7\nmodel:\n  size: tiny\noptim:\n  lr: 0.01\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--optim.lr", "0.02", "--print_config"])
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "size: tiny" in printed and "lr: 0.02" in printed
    assert underscored(["--max-steps=a-b", "--data.seq-len", "a-b"]) == ["--max_steps=a-b", "--data.seq_len", "a-b"]
