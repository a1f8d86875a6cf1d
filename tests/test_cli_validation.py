"""Every value the command line takes is checked before anything runs (issue 11): a bad one gives one line,
``nestedmemory <command>: error: …``, exit status 2, no traceback, and writes no run folder. The same checks guard
the Python API (``TrainConfig(...)``)."""

import pytest

from nestedmemory.cli import main
from nestedmemory.train import OptimConfig, TrainConfig, UserError
from nestedmemory.train.bench import BenchConfig

#: (argv, a fragment of the error); ``INPUTS/`` is a folder of prepared files, ``RUN`` a checkpoint never read
#: (the values are refused before it would be).
BAD = [
    # train: the numeric settings of TrainConfig and its parts
    (["train", "--optim.lr", "-1"], "--optim.lr must be > 0, got -1.0"),
    (["train", "--optim.lr", ".nan"], "--optim.lr must be a finite number > 0, got nan"),
    (["train", "--optim.grad_clip", ".inf"], "--optim.grad_clip must be a finite number >= 0, got inf"),
    (["train", "--optim.weight_decay", "-0.1"], "--optim.weight_decay must be >= 0"),
    (["train", "--optim.warmup_steps", "-1"], "--optim.warmup_steps must be >= 0, got -1"),
    (["train", "--optim.min_lr_ratio", "1.5"], "--optim.min_lr_ratio must be in [0, 1], got 1.5"),
    (["train", "--optim.grad_clip", "-1"], "--optim.grad_clip must be >= 0"),
    (["train", "--max_steps", "0"], "--max_steps must be >= 1, got 0"),
    (["train", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["train", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["train", "--log_every", "0"], "--log_every must be >= 1, got 0"),
    (["train", "--eval_every", "-1"], "--eval_every must be >= 0, got -1"),
    (["train", "--save_every", "-1"], "--save_every must be >= 0, got -1"),
    (["train", "--keep_checkpoints", "0"], "--keep_checkpoints must be >= 1, got 0"),
    (["train", "--keep-checkpoints", "-1"], "--keep_checkpoints must be >= 1, got -1"),
    (["train", "--data.seq_len", "1"], "--data.seq_len must be >= 2, got 1"),
    (["train", "--data.val_tokens", "0"], "--data.val_tokens must be >= 1, got 0"),
    (["train", "--data.shuffle_buffer", "0"], "--data.shuffle_buffer must be >= 1, got 0"),
    (["train", "--sample.max_new_tokens", "0"], "--sample.max_new_tokens must be >= 1, got 0"),
    (["train", "--sample.temperature", "-1"], "--sample.temperature must be >= 0, got -1.0"),
    (["train", "--sample.top_k", "-2"], "--sample.top_k must be >= 0, got -2"),
    (["train", "--tnt.stage2_steps", "-1"], "--tnt.stage2_steps must be >= 0, got -1"),
    # train: names, keys and devices
    (["train", "--model.preset", "hpoe"], "--model.preset: unknown preset 'hpoe'; did you mean 'hope'?"),
    (["train", "--model.size", "smal"], "--model.size: unknown size 'smal'; did you mean 'small'?"),
    (["train", "--model.overrides", "{hiden_size: 999}"], "unknown key 'hiden_size'; did you mean 'hidden_size'?"),
    (["train", "--model.memory", "{chunk_sise: 8}"], "--model.memory: unknown key 'chunk_sise'; did you mean "
                                                     "'chunk_size'?"),
    (["train", "--optim.options", "{betaz: [0.9, 0.99]}"], "--optim.options: unknown key 'betaz'; did you mean "
                                                           "'betas'?"),
    (["train", "--optim.options", "{eps: -1}"], "Invalid epsilon value"),
    (["train", "--optim.name", "muon", "--optim.options", "{momentum: 2}"], "momentum must be a number in [0, 1)"),
    (["train", "--device", "cuda:99"], "--device: device 'cuda:99' is not available"),
    (["train", "--device", "tpu7"], "--device: unknown device 'tpu7'"),
    # train: files
    (["train", "--data.path", "INPUTS/model.bin"], "INPUTS/model.bin is not a text file: it holds a NUL byte"),
    (["train", "--data.path", "INPUTS/latin1.txt"], "INPUTS/latin1.txt is not UTF-8 text"),
    (["train", "--data.path", "INPUTS/rows.jsonl"], "INPUTS/rows.jsonl is not a text file"),
    (["train", "--out", "INPUTS/latin1.txt"], "--out INPUTS/latin1.txt is a file"),
    # parsing: YAML, types, flags, commands
    (["train", "--config", "INPUTS/bad.yaml"], "Problems parsing config"),
    (["train", "--model.overrides", "{a: ["], "Expected a <class 'dict'>"),
    (["train", "--max_steps", "abc"], 'Parser key "max_steps"'),
    (["train", "--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
    (["trian"], "invalid choice: 'trian'"),
    # eval
    (["eval", "RUN", "--suite", "mqar", "--n", "0"], "--n must be >= 1, got 0"),
    (["eval", "RUN", "--data", "text.txt", "--seq_len", "1"], "--seq_len must be >= 2, got 1"),
    (["eval", "RUN", "--suite", "mqar", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["eval", "RUN", "--suite", "mqar", "--seed", "-3"], "--seed must be >= 0, got -3"),
    (["eval", "RUN", "--suite", "mqar,mda"], "--suite: unknown suite 'mda'; did you mean 'mad'?"),
    (["eval", "RUN", "--suite", "mqar", "--device", "gpu"], "--device: unknown device 'gpu'"),
    (["eval", "RUN"], "nothing to evaluate"),
    (["eval", "RUN", "--suite", "mqar", "--out", "INPUTS/bad.yaml"], "--out INPUTS/bad.yaml is a file"),
    # generate
    (["generate", "RUN", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1, got 0"),
    (["generate", "RUN", "--top_k", "-2"], "--top_k must be >= 0, got -2"),
    (["generate", "RUN", "--temperature", "-0.5"], "--temperature must be >= 0, got -0.5"),
    (["generate", "RUN", "--caching_segment", "-1"], "--caching_segment must be >= 0, got -1"),
    (["generate", "RUN", "--device", "cuda:99"], "--device: device 'cuda:99' is not available"),
    # bench
    (["bench", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["bench", "--seq_len", "1"], "--seq_len must be >= 2, got 1"),
    (["bench", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["bench", "--size", "tiniest"], "--size: unknown size 'tiniest'"),
    (["bench", "--preset", "titans"], "--preset: unknown preset 'titans'"),
    (["bench", "--device", "cuda:99"], "--device: device 'cuda:99' is not available"),
    # check
    (["check", "--chunk_size", "0"], "--chunk_size must be >= 1, got 0"),
]


@pytest.fixture
def inputs(tmp_path):
    """A folder of bad input files; the current directory is an empty folder beside it."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "bad.yaml").write_text("max_steps: [\n")
    (folder / "model.bin").write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)))
    (folder / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 10)
    (folder / "rows.jsonl").write_bytes(b'{"text": "a"}\n\x00\x00')
    return folder


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_bad_values_give_one_line_and_status_2_before_anything_is_written(argv, message, inputs, tmp_path,
                                                                          monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(inputs.iterdir())
    argv = [arg.replace("INPUTS/", f"{inputs}/") for arg in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    command = argv[0] if argv[0] in ("train", "eval", "generate", "bench", "check") else None
    assert err.startswith(f"nestedmemory{f' {command}' if command else ''}: error: "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err + captured.out, err
    assert message.replace("INPUTS/", f"{inputs}/") in err, err
    assert not any(cwd.iterdir()) and sorted(inputs.iterdir()) == before  # no run folder, nothing written


def test_the_python_api_checks_the_same_values():
    with pytest.raises(ValueError, match=r"--optim.lr must be > 0, got -1"):
        TrainConfig(optim=OptimConfig(lr=-1))
    with pytest.raises(UserError, match="--keep_checkpoints must be >= 1, got -1"):
        TrainConfig(keep_checkpoints=-1)
    with pytest.raises(UserError, match="--steps must be >= 1, got 0"):
        BenchConfig(size="tiny", steps=0)
    assert TrainConfig().optim.lr > 0  # the defaults pass
