"""The ``nestedmemory`` command (also ``python -m nestedmemory``):

- ``train``: train a model (default: a small model on the embedded Shakespeare corpus, on the CPU, in minutes);
  under ``torchrun`` on many processes;
- ``eval``: perplexity on a text file and the synthetic suites, as a table;
- ``generate``: sample from a run, a checkpoint or a saved model;
- ``bench``: the benchmark scripts, or a quick tokens/s measure of a model;
- ``info``: the memory rules, presets and sizes; ``check`` (the default): verify, on this machine, that the
  chunk-parallel path reproduces the literal token-by-token rule for every memory rule.

Settings come from defaults, YAML files (``--config FILE``, e.g. a run's ``config.yaml``) and flags, in that order
(jsonargparse): ``nestedmemory train --model.preset hope --optim.lr 1e-3 --max_steps 2000``; ``--print_config``
shows the result. Flags may be spelled with dashes (``--max-steps``). A problem with the inputs is reported in one
line with exit status 2.
"""

from __future__ import annotations

import sys
import time

import torch

from .memory import memorize
from .memory.catalog import all_rules, random_inputs
from .memory.rule import LEARNERS, MEMORIES, OBJECTIVES, RETENTIONS


def relative_error(reference, other) -> float:
    """``max|a − b| / max|a|`` (the scale-free error the exactness checks use)."""
    return ((reference - other).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def check(args) -> int:
    torch.manual_seed(0)
    b, t, h, d = 2, 13, 2, 4
    worst = 0.0
    start = time.perf_counter()
    rules = list(all_rules(args.chunk_size))
    for rule in rules:
        q, k, v, gates = random_inputs(rule, b, t, h, d)
        state = rule.init_state(b, h, d, dtype=torch.float64)
        ref, ref_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, mode="recurrent",
                                  **gates)
        out, out_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, **gates)
        err = max(relative_error(a, c) for a, c in zip([ref, *ref_state.weights], [out, *out_state.weights]))
        worst = max(worst, err)
        if args.verbose:
            print(f"{rule.memory:6s} {rule.objective:6s} {rule.retention:7s} {rule.learner:8s} rel. error {err:.1e}")
    ok = worst < 1e-9
    print(f"{len(rules)} rules, chunk size {args.chunk_size}, length {t}: chunked vs recurrent rel. error "
          f"{worst:.1e} (fp64) in {time.perf_counter() - start:.1f}s — {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def info(_args) -> int:
    from .models import PRESETS, SIZES
    from .train import DEFAULT_PRESET, DEFAULT_SIZE, TRAIN_SIZES

    print("nestedmemory memory core — choices of MemoryRule:")
    for name, options in (("memory", MEMORIES), ("objective", OBJECTIVES), ("retention", RETENTIONS),
                          ("learner", LEARNERS)):
        print(f"  {name:10s} {', '.join(options)}")
    print(f"presets: {', '.join(PRESETS)} (train default: {DEFAULT_PRESET})")
    print(f"sizes: {', '.join([*SIZES, *TRAIN_SIZES])} (train default: {DEFAULT_SIZE})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return 0


def train(args) -> int:
    from .train import TrainConfig
    from .train import train as run

    summary = run(TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__}))
    return 130 if summary["interrupted"] else 0


def evaluate(args) -> int:
    from pathlib import Path

    from .train import UserError
    from .train.evaluate import run_suites, text_perplexity, write_table
    from .train.inference import load

    if not args.data and not args.suite:
        raise UserError("nothing to evaluate: give --data FILE (perplexity) and/or --suite NAME[,NAME]")
    model, tokenizer, folder = load(args.checkpoint, args.device or "cpu")
    results = {}
    if args.data:
        try:
            results["perplexity"] = text_perplexity(model, tokenizer, args.data, args.seq_len, args.batch_size,
                                                    args.text_field, args.separator)
        except (OSError, ValueError) as error:
            raise UserError(f"{args.data}: {error}") from error
    if args.suite:
        try:
            results.update(run_suites(model, args.suite.split(","), args.n, args.seed, args.batch_size))
        except KeyError as error:
            raise UserError(error.args[0]) from error
    markdown, _ = write_table(results, Path(args.out or folder) / "eval.md", f"Evaluation of {folder}")
    print(markdown.read_text(encoding="utf-8") + f"\nwritten to {markdown} and {markdown.with_suffix('.json')}")
    return 0


def generate(args) -> int:
    from .train import SampleConfig
    from .train.inference import load, sample

    model, tokenizer, _ = load(args.checkpoint, args.device or "cpu")
    config = SampleConfig(**{name: getattr(args, name) for name in SampleConfig.__dataclass_fields__})
    print(config.prompt + sample(model, tokenizer, config))
    return 0


def bench(args) -> int:
    from .train import ModelConfig
    from .train.bench import run_script, throughput

    if args.script:
        return run_script(args.script, ["--quick"] * args.quick)
    model = ModelConfig(args.preset, args.size)
    rate = throughput(model, args.seq_len, args.batch_size, args.steps, args.device or "cpu")
    print(f"{args.preset} ({args.size}): {rate:.0f} training tokens/s (batch {args.batch_size} × {args.seq_len}, "
          f"forward + backward + AdamW, {args.device or 'cpu'}, {torch.get_num_threads()} threads)")
    return 0


def build_parser():

    from jsonargparse import ActionConfigFile, ArgumentParser

    from .train import DEFAULT_PRESET, DEFAULT_SIZE, SampleConfig, TrainConfig

    def command(description: str) -> ArgumentParser:
        parser = ArgumentParser(description=description)
        parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of settings")
        return parser

    check_p = command("chunked == recurrent for every memory rule (fp64)")
    check_p.add_argument("--chunk_size", type=int, default=4)
    check_p.add_argument("-v", "--verbose", action="store_true")

    train_p = command(TrainConfig.__doc__.split("\n")[0])
    train_p.add_class_arguments(TrainConfig, as_group=False)

    eval_p = command("Perplexity on a text file and/or synthetic suites; writes eval.md and eval.json.")
    eval_p.add_argument("checkpoint", help="a run folder, a checkpoint or a saved model folder")
    eval_p.add_argument("--data", type=str | None, help="a text / .jsonl / .parquet file or folder")
    eval_p.add_argument("--text_field", default="text", help="the text column of JSONL / Parquet rows")
    eval_p.add_argument("--separator", default="\n\n", help="text between documents")
    eval_p.add_argument("--seq_len", type=int, default=256, help="tokens per evaluated sequence")
    eval_p.add_argument("--suite", type=str | None, help="suites of nestedmemory.tasks, comma-separated")
    eval_p.add_argument("--n", type=int, default=256, help="examples per suite")
    eval_p.add_argument("--seed", type=int, default=0, help="seed of the suites' examples")
    eval_p.add_argument("--batch_size", type=int, default=8)
    eval_p.add_argument("--out", type=str | None, help="folder of the table (default: the model's)")
    eval_p.add_argument("--device", type=str | None)

    generate_p = command("Sample from a trained model with its recurrent cache.")
    generate_p.add_argument("checkpoint", help="a run folder, a checkpoint or a saved model folder")
    generate_p.add_class_arguments(SampleConfig, as_group=False)
    generate_p.add_argument("--device", type=str | None)

    bench_p = command("Run a script of benchmarks/, or measure a model's training tokens/s.")
    bench_p.add_argument("script", nargs="?", help="a benchmarks/ script name (e.g. memory_core, layers)")
    bench_p.add_argument("--quick", action="store_true", help="pass --quick to the script")
    bench_p.add_argument("--preset", default=DEFAULT_PRESET)
    bench_p.add_argument("--size", default=DEFAULT_SIZE)
    bench_p.add_argument("--seq_len", type=int, default=256)
    bench_p.add_argument("--batch_size", type=int, default=16)
    bench_p.add_argument("--steps", type=int, default=3)
    bench_p.add_argument("--device", type=str | None)

    parser = ArgumentParser(prog="nestedmemory", description=__doc__)
    commands = parser.add_subcommands(required=False, dest="command")
    for name, sub, text in (("check", check_p, "verify the memory core (the default)"),
                            ("info", ArgumentParser(), "list the memory rules, presets and sizes"),
                            ("train", train_p, "train a model"), ("eval", eval_p, "evaluate a model"),
                            ("generate", generate_p, "sample from a model"), ("bench", bench_p, "benchmarks")):
        commands.add_subcommand(name, sub, help=text)
    return parser


COMMANDS = {"check": check, "info": info, "train": train, "eval": evaluate, "generate": generate, "bench": bench}


def underscored(argv: list[str]) -> list[str]:
    """``--max-steps`` → ``--max_steps`` (jsonargparse's spelling), values untouched."""
    return [arg.split("=")[0].replace("-", "_").replace("__", "--", 1) + arg[len(arg.split("=")[0]):]
            if arg.startswith("--") else arg for arg in argv]


def main(argv=None) -> int:
    from transformers.utils import logging

    from .train import UserError

    logging.disable_progress_bar()
    argv = underscored(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.instantiate(parser.parse_args(argv or ["check"]))
    name = args.command or "check"
    try:
        return COMMANDS[name](args.get(name) or args)
    except (UserError, FileNotFoundError) as error:
        print(f"nestedmemory {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
