"""The ``nestedmemory`` command (also ``python -m nestedmemory``):

- ``train``: train a model (default: a small model on the embedded Shakespeare corpus, on the CPU, in minutes);
  under ``torchrun`` on many processes;
- ``eval``: perplexity on a text file and the synthetic suites, as a table;
- ``generate``: sample from a run, a checkpoint or a saved model;
- ``bench``: the benchmark scripts, or a quick tokens/s measure of a model;
- ``info``: the memory rules, presets and sizes; ``check`` (the default): verify, on this machine, that the
  chunk-parallel path reproduces the literal token-by-token rule for every memory rule;
- ``ts train`` / ``ts eval``: time-series models (Chimera, Hydra, TSM2, any preset) trained and tested in the
  Time-Series-Library protocol (forecast, classify, anomaly; :mod:`nestedmemory.timeseries.train`);
- ``graph train`` / ``graph eval``: graph sequence models (GSM++, GPS, GatedGCN) on GSM++'s synthetic graph tasks and
  karate (:mod:`nestedmemory.graphs.train`; needs the ``graphs`` extra).

Settings come from defaults, YAML files (``--config FILE``, e.g. a run's ``config.yaml``) and flags, in that order
(jsonargparse): ``nestedmemory train --model.preset hope --optim.lr 1e-3 --max_steps 2000``; ``--print_config``
shows the result. Flags may be spelled with dashes (``--max-steps``). ``train --resume RUN`` starts from the
settings RUN was trained with; flags given beside it change them (the trainer refuses changes a resumed run cannot
take, listing them). Every value is checked by the settings dataclass it fills (``TrainConfig``, ``EvalConfig``,
…) before anything is loaded or written; a problem with the inputs is reported in one line,
``nestedmemory <command>: error: …``, with exit status 2.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

import torch

from .memory import memorize
from .memory.catalog import all_rules, random_inputs
from .memory.rule import LEARNERS, MEMORIES, OBJECTIVES, RETENTIONS
from .tasks import SUITE_NAMES
from .train import SampleConfig, TrainConfig, UserError
from .train.config import AT_LEAST_ONE, NON_NEGATIVE, Limit, Settings, check_device, check_folder, check_names


def relative_error(reference, other) -> float:
    """``max|a − b| / max|a|`` (the scale-free error the exactness checks use)."""
    return ((reference - other).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


@dataclass
class CheckConfig(Settings):
    """Chunked == recurrent for every memory rule (fp64).

    Args:
        chunk_size: the memory chunk size every rule is checked at
    """

    chunk_size: int = 4

    LIMITS = {"chunk_size": AT_LEAST_ONE}


def check(args) -> int:
    chunk_size = settings(CheckConfig, args).chunk_size
    torch.manual_seed(0)
    b, t, h, d = 2, 13, 2, 4
    worst = 0.0
    start = time.perf_counter()
    rules = list(all_rules(chunk_size))
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
    print(f"{len(rules)} rules, chunk size {chunk_size}, length {t}: chunked vs recurrent rel. error "
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
    from .train import train as run

    summary = run(settings(TrainConfig, args))
    return 130 if summary["interrupted"] else 0


@dataclass
class EvalConfig(Settings):
    """Perplexity on a text file and/or synthetic suites; writes eval.md and eval.json.

    Args:
        data: a text / .jsonl / .parquet file or folder
        text_field: the text column of JSONL / Parquet rows
        separator: text between documents
        seq_len: tokens per evaluated sequence
        suite: suites of nestedmemory.tasks, comma-separated
        n: examples per suite
        seed: seed of the suites' examples
        batch_size: sequences per forward pass
        out: folder of the table (default: the model's)
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``mps``
    """

    data: str | None = None
    text_field: str = "text"
    separator: str = "\n\n"
    seq_len: int = 256
    suite: str | None = None
    n: int = 256
    seed: int = 0
    batch_size: int = 8
    out: str | None = None
    device: str | None = None

    LIMITS = {"seq_len": Limit(2), "n": AT_LEAST_ONE, "seed": NON_NEGATIVE, "batch_size": AT_LEAST_ONE}

    @property
    def suites(self) -> list[str]:
        return self.suite.split(",") if self.suite else []

    def check(self) -> None:
        """Something to evaluate, known suites, an available device, a folder for the table — before the model
        is loaded."""
        if not self.data and not self.suite:
            raise UserError("nothing to evaluate: give --data FILE (perplexity) and/or --suite NAME[,NAME]")
        check_names("suite", "suite", self.suites, SUITE_NAMES)
        check_device("device", self.device)
        check_folder("out", self.out)


def evaluate(args) -> int:
    from pathlib import Path

    from .train.evaluate import run_suites, text_perplexity, write_table
    from .train.inference import load

    config = settings(EvalConfig, args)
    model, tokenizer, folder = load(args.checkpoint, config.device or "cpu")
    results = {}
    try:  # a data file that cannot be read, a suite the model's vocabulary cannot hold: both name the problem
        if config.data:
            results["perplexity"] = text_perplexity(model, tokenizer, config.data, config.seq_len, config.batch_size,
                                                    config.text_field, config.separator)
        results.update(run_suites(model, config.suites, config.n, config.seed, config.batch_size))
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from error
    markdown, _ = write_table(results, Path(config.out or folder) / "eval.md", f"Evaluation of {folder}")
    print(markdown.read_text(encoding="utf-8") + f"\nwritten to {markdown} and {markdown.with_suffix('.json')}")
    return 0


@dataclass
class GenerateConfig(SampleConfig):
    """Sampling from a saved model (the flags of SampleConfig, unprefixed) on a device.

    Args:
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``mps``
        caching_segment: post-training Memory Caching: the memories cache their state every N tokens and decode
            with the average of the cached and online memories (MC §3.4; 0: off)
    """

    device: str | None = None
    caching_segment: int = 0

    FLAGS = ""
    LIMITS = dict(SampleConfig.LIMITS, caching_segment=NON_NEGATIVE)

    def check(self) -> None:
        super().check()
        check_device("device", self.device)


def generate(args) -> int:
    from .layers.caching import enable_caching
    from .train.inference import load, sample

    config = settings(GenerateConfig, args)
    model, tokenizer, _ = load(args.checkpoint, config.device or "cpu")
    if config.caching_segment:
        try:
            enable_caching(model, segment=config.caching_segment)
        except ValueError as error:
            raise UserError(f"--caching_segment: {error}") from error
    print(config.prompt + sample(model, tokenizer, config))
    return 0


def bench(args) -> int:
    from .train.bench import BenchConfig, run_script, throughput

    config = settings(BenchConfig, args)
    if args.script:
        return run_script(args.script, ["--quick"] * args.quick)
    rate = throughput(config)
    print(f"{config.preset} ({config.size}): {rate:.0f} training tokens/s (batch {config.batch_size} × "
          f"{config.seq_len}, forward + backward + AdamW, {config.device or 'cpu'}, {torch.get_num_threads()} "
          "threads)")
    return 0


def train_or_evaluate(args, trainer, train_config, eval_config) -> int:
    """``<group> train`` (status 130 when interrupted) or ``<group> eval`` of a trainer module (``train``,
    ``evaluate``) with its settings classes."""
    if args.subcommand == "train":
        return 130 if trainer.train(settings(train_config, args.train))["interrupted"] else 0
    trainer.evaluate(args.eval.run, settings(eval_config, args.eval))
    return 0


def ts(args) -> int:
    """``ts train`` / ``ts eval``."""
    from .timeseries import train as trainer

    return train_or_evaluate(args, trainer, trainer.TSTrainConfig, trainer.TSEvalConfig)


def graph(args) -> int:
    """``graph train`` / ``graph eval``."""
    from .graphs import train as trainer

    return train_or_evaluate(args, trainer, trainer.GraphTrainConfig, trainer.GraphEvalConfig)


def graph_parsers(command, train_defaults: dict | None = None) -> dict:
    """The parsers of ``graph train`` / ``graph eval`` with their help (``command``: a settings parser's
    constructor). PyG and networkx are optional: a missing one is a :class:`UserError` naming the extra."""
    try:
        from .graphs.train import GraphEvalConfig, GraphTrainConfig
    except ImportError as error:
        raise UserError(f"graph models need the optional dependencies of the graphs extra (pip install -e "
                        f"'.[graphs]'): {error}") from None
    graph_train_p = command(GraphTrainConfig.__doc__.split("\n")[0])
    graph_train_p.add_class_arguments(GraphTrainConfig, as_group=False)
    if train_defaults:
        graph_train_p.set_defaults(train_defaults)
    graph_eval_p = command(GraphEvalConfig.__doc__.split("\n")[0])
    graph_eval_p.add_argument("run", help="a graph run folder or checkpoint")
    graph_eval_p.add_class_arguments(GraphEvalConfig, as_group=False)
    return {"train": (graph_train_p, "train a graph model"),
            "eval": (graph_eval_p, "test a graph run on its test split")}


GRAPH_HELP = ("graphs: train or evaluate GSM++, GPS or GatedGCN on GSM++'s synthetic tasks, karate, Les Misérables "
              "or a PyG dataset from a path")


def build_parser(train_defaults: dict | None = None, ts_train_defaults: dict | None = None, graphs: bool = False,
                 graph_train_defaults: dict | None = None):
    """The command line; ``train_defaults`` (nested like ``TrainConfig``) replace the defaults of ``train``,
    ``ts_train_defaults`` those of ``ts train``, ``graph_train_defaults`` those of ``graph train``. ``graph`` gets
    its flags only with ``graphs`` (the command line starts with it): PyG is optional and slow to import."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from .timeseries.train import TSEvalConfig, TSTrainConfig
    from .train.bench import BenchConfig

    def command(description: str) -> ArgumentParser:
        parser = ArgumentParser(description=description, exit_on_error=False)
        parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of settings")
        return parser

    check_p = command(CheckConfig.__doc__.split("\n")[0])
    check_p.add_class_arguments(CheckConfig, as_group=False)
    check_p.add_argument("-v", "--verbose", action="store_true", help="print every rule's error")

    train_p = command(TrainConfig.__doc__.split("\n")[0])
    train_p.add_class_arguments(TrainConfig, as_group=False)
    if train_defaults:
        train_p.set_defaults(train_defaults)

    eval_p = command(EvalConfig.__doc__.split("\n")[0])
    eval_p.add_argument("checkpoint", help="a run folder, a checkpoint or a saved model folder")
    eval_p.add_class_arguments(EvalConfig, as_group=False)

    generate_p = command("Sample from a trained model with its recurrent cache.")
    generate_p.add_argument("checkpoint", help="a run folder, a checkpoint or a saved model folder")
    generate_p.add_class_arguments(GenerateConfig, as_group=False)

    bench_p = command("Run a script of benchmarks/, or measure a model's training tokens/s.")
    bench_p.add_argument("script", nargs="?", help="a benchmarks/ script name (e.g. memory_core, layers)")
    bench_p.add_argument("--quick", action="store_true", help="pass --quick to the script")
    bench_p.add_class_arguments(BenchConfig, as_group=False)

    ts_train_p = command(TSTrainConfig.__doc__.split("\n")[0])
    ts_train_p.add_class_arguments(TSTrainConfig, as_group=False)
    if ts_train_defaults:
        ts_train_p.set_defaults(ts_train_defaults)

    ts_eval_p = command(TSEvalConfig.__doc__.split("\n")[0])
    ts_eval_p.add_argument("run", help="a time-series run folder or checkpoint")
    ts_eval_p.add_class_arguments(TSEvalConfig, as_group=False)

    ts_p = ArgumentParser(description="Time-series models in the Time-Series-Library protocol.", exit_on_error=False)
    graph_p = ArgumentParser(description=GRAPH_HELP, exit_on_error=False)
    graph_subs = graph_parsers(command, graph_train_defaults) if graphs else {}

    parser = ArgumentParser(prog="nestedmemory", description=__doc__, exit_on_error=False)
    commands = parser.add_subcommands(required=False, dest="command")
    for name, sub, text in (("check", check_p, "verify the memory core (the default)"),
                            ("info", ArgumentParser(exit_on_error=False), "list the memory rules, presets and sizes"),
                            ("train", train_p, "train a model"), ("eval", eval_p, "evaluate a model"),
                            ("generate", generate_p, "sample from a model"), ("bench", bench_p, "benchmarks"),
                            ("ts", ts_p, "time series: train or evaluate a forecaster, classifier, anomaly detector"),
                            ("graph", graph_p, GRAPH_HELP)):
        commands.add_subcommand(name, sub, help=text)
    ts_commands = ts_p.add_subcommands(required=True, dest="subcommand")  # after ts_p's own (jsonargparse's order)
    ts_commands.add_subcommand("train", ts_train_p, help="train a time-series model")
    ts_commands.add_subcommand("eval", ts_eval_p, help="test a time-series run on its test split")
    if graph_subs:
        graph_commands = graph_p.add_subcommands(required=True, dest="subcommand")
        for name, (sub, text) in graph_subs.items():
            graph_commands.add_subcommand(name, sub, help=text)
    return parser


COMMANDS = {"check": check, "info": info, "train": train, "eval": evaluate, "generate": generate, "bench": bench,
            "ts": ts, "graph": graph}
#: the commands with subcommands (``ts train``, ``graph eval``, …).
GROUPS, SUBCOMMANDS = ("ts", "graph"), ("train", "eval")


def settings(cls, args):
    """The settings dataclass ``cls`` from the parsed flags of its fields (building it validates them)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def saved_settings(resume: str, cls=TrainConfig) -> dict:
    """The settings of the run ``resume`` names (a run folder or a checkpoint; the config saved in its newest
    checkpoint), as defaults of ``train`` (``ts train``, ``graph train``: ``cls`` their config): the fields of
    today's ``cls`` only, and not ``out`` or ``resume``, which say where this command reads and writes."""
    from .train import checkpoint

    state = checkpoint.trainer_state(checkpoint.resolve(resume), mmap=True)  # the weights are read by the trainer
    saved = {k: v for k, v in state.get("config", {}).items() if k not in ("out", "resume")}
    return known_fields(cls, saved)


def known_fields(cls, values: dict) -> dict:
    """The entries of ``values`` (``dataclasses.asdict`` form) that are fields of dataclass ``cls``, the nested
    settings (``optim``, …) filtered the same way: a field renamed or removed since a run was saved is dropped."""
    known = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            nested = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None
            known[f.name] = known_fields(nested, values[f.name]) if nested else values[f.name]
    return known


def parse(argv: list[str]):
    """The parsed, validated command line. ``train --resume RUN``, ``ts train --resume RUN`` and ``graph train
    --resume RUN`` (``resume`` given as a flag or in a ``--config`` file) are parsed twice: once to find RUN, then
    with RUN's saved settings as the defaults, so the run continues as it was started and only the flags given
    beside ``--resume`` change it."""
    from .timeseries.train import TSTrainConfig

    graphs = argv[:1] == ["graph"]
    parser = build_parser(graphs=graphs)
    first = parser.parse_args([arg for arg in argv if not arg.startswith("--print_config")])
    if first.command == "train" and first.train.resume is not None:
        parser = build_parser(saved_settings(first.train.resume))
    elif first.command == "ts" and first.ts.subcommand == "train" and first.ts.train.resume is not None:
        parser = build_parser(ts_train_defaults=saved_settings(first.ts.train.resume, TSTrainConfig))
    elif first.command == "graph" and first.graph.subcommand == "train" and first.graph.train.resume is not None:
        from .graphs.train import GraphTrainConfig

        parser = build_parser(graphs=True, graph_train_defaults=saved_settings(first.graph.train.resume,
                                                                               GraphTrainConfig))
    return parser.instantiate(parser.parse_args(argv))


def underscored(argv: list[str]) -> list[str]:
    """``--max-steps`` → ``--max_steps`` (jsonargparse's spelling), values untouched."""
    return [arg.split("=")[0].replace("-", "_").replace("__", "--", 1) + arg[len(arg.split("=")[0]):]
            if arg.startswith("--") else arg for arg in argv]


def main(argv=None) -> int:
    """Run the command line ``argv``; its exit status. Bad input (a flag, a file, a checkpoint) is reported in one
    line, ``nestedmemory <command>: error: …``, with status 2, before anything is written."""
    from argparse import ArgumentError

    from transformers.utils import logging

    logging.disable_progress_bar()
    argv = underscored(sys.argv[1:] if argv is None else list(argv)) or ["check"]
    name = argv[0] if argv[0] in COMMANDS else None
    if name in GROUPS and len(argv) > 1 and argv[1] in SUBCOMMANDS:
        name = f"{name} {argv[1]}"
    try:
        args = parse(argv)
        command = args.command or "check"
        name = f"{command} {args.get(command).subcommand}" if command in GROUPS else command
        return COMMANDS[command](args.get(command) or args)
    except (ArgumentError, UserError, FileNotFoundError) as error:
        print(f"nestedmemory{f' {name}' if name else ''}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
