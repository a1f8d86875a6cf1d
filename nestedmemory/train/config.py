"""The training configuration: dataclasses that the command line fills from defaults, YAML files (``--config``)
and flags (``--model.preset hope``), and the model they describe.

``DEFAULT_PRESET`` / ``DEFAULT_SIZE`` are what ``nestedmemory train`` trains with no arguments. Besides the model
sizes of :data:`nestedmemory.models.SIZES`, training knows :data:`TRAIN_SIZES`: ``small``, the default CPU run.
Every settings dataclass checks its values when it is built (:class:`Settings`), raising :class:`InvalidSetting`
with a message that names the flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..models import PRESETS, SIZES, NestedMemoryConfig, preset_config
from ..models.config import memory_keys
from .errors import UserError

DEFAULT_PRESET = "titans-lmm"  # docs/decisions.md, "Measured: the default run"
DEFAULT_SIZE = "small"
#: size → (base size of ``SIZES``, config overrides, memory-rule overrides, CMS overrides). ``small`` trains on two
#: CPU cores in minutes: ``tiny`` widened to 128 and deepened to 4 layers, memory chunk 64 (the paper sizes' chunk;
#: the tiny chunk of 8 is 3.7× slower on the CPU), CMS levels every 64 and 256 tokens with first-order updates
#: (the tiny periods 4 / 16 cost ~10× a plain MLP; second order ~1.5× first order).
TRAIN_SIZES: dict[str, tuple[str, dict, dict, dict]] = {
    "small": ("tiny", dict(hidden_size=128, num_layers=4), dict(chunk_size=64), dict(periods=[64, 256],
                                                                                   first_order=True)),
}


# ---------------------------------------------------------------------------------------------------------------
# validation: every settings dataclass checks itself when it is built
# ---------------------------------------------------------------------------------------------------------------

class InvalidSetting(UserError, ValueError):
    """A setting given a value it cannot take; the message names its flag (a ``ValueError`` too, for callers of
    the Python API)."""


@dataclass(frozen=True)
class Limit:
    """The values a numeric setting allows: finite numbers ``>= low`` (``> low`` when ``strict``), ``<= high``."""

    low: float
    high: float = math.inf
    strict: bool = False

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` (``None``: nothing)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"must be a number {self}, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number {self}, got {value!r}"
        inside = (value > self.low if self.strict else value >= self.low) and value <= self.high
        return None if inside else f"must be {self}, got {value!r}"

    def __str__(self) -> str:
        if self.high < math.inf:
            return f"in [{self.low:g}, {self.high:g}]"
        return f"{'>' if self.strict else '>='} {self.low:g}"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, FRACTION = Limit(0, strict=True), Limit(0), Limit(1), Limit(0, 1)


def check_names(flag: str, what: str, names: Iterable, known: Iterable) -> None:
    """Raise :class:`InvalidSetting` for the first of ``names`` (a choice, or the keys of a dict) given to
    ``--flag`` that is not in ``known``, suggesting the closest known name (the likely typo) or listing them."""
    known = [str(name) for name in known]
    for name in names:
        if str(name) not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(sorted(known))}"
            raise InvalidSetting(f"--{flag}: unknown {what} {name!r}; {hint}")


def check_device(flag: str, device: str | None) -> None:
    """Raise :class:`InvalidSetting` unless ``device`` (``None``: the default) is a device of torch that this
    machine has: a CUDA device on a CPU-only build, or a GPU index past the last, fails here rather than mid-run."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InvalidSetting(f"--{flag}: unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    count = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
    available = count.get(parsed.type, 0)
    if (parsed.index or 0) >= available:
        build = ", a CPU-only build" if parsed.type == "cuda" and torch.version.cuda is None else ""
        raise InvalidSetting(f"--{flag}: device {device!r} is not available: this machine has {available} "
                             f"{parsed.type} device(s) (torch {torch.__version__}{build})")


def check_folder(flag: str, path: str | None) -> None:
    """Raise :class:`InvalidSetting` if ``path`` (an output folder; ``None``: the default) is an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise InvalidSetting(f"--{flag} {path} is a file, not a folder")


class Settings:
    """Base of the settings dataclasses: construction checks every field named in ``LIMITS``, then :meth:`check`,
    so the Python API (``train(TrainConfig(...))``) is validated like the command line, before anything is built
    or written. Messages name the flag: ``FLAGS`` is the prefix of the class's flags (``optim.``). (Class
    attributes, not annotated: jsonargparse resolves a subclass's annotations in the subclass's module.)"""

    FLAGS = ""
    #: field → the :class:`Limit` its values must keep.
    LIMITS: dict = {}

    def __post_init__(self) -> None:
        for name, limit in self.LIMITS.items():
            problem = limit.problem(getattr(self, name))
            if problem:
                raise InvalidSetting(f"--{self.FLAGS}{name} {problem}")
        self.check()

    def check(self) -> None:
        """Checks beyond the numeric ranges of ``LIMITS`` (names, keys, devices); none by default."""


@dataclass
class RunEvalConfig(Settings):
    """Settings of testing a saved run (``ts eval``, ``graph eval``): ``batch_size`` (default: the run's), ``out``
    (the folder of the table; default: the run folder), ``device``."""

    batch_size: int | None = None
    out: str | None = None
    device: str | None = None

    def check(self) -> None:
        if self.batch_size is not None and AT_LEAST_ONE.problem(self.batch_size):
            raise InvalidSetting(f"--batch_size {AT_LEAST_ONE.problem(self.batch_size)}")
        check_device("device", self.device)
        check_folder("out", self.out)


#: the fields ``--model.overrides`` may set: the keywords of :class:`NestedMemoryConfig`.
CONFIG_FIELDS = frozenset(inspect.signature(NestedMemoryConfig.__init__).parameters) - {"self", "kwargs"}


@dataclass
class ModelConfig(Settings):
    """The model.

    Args:
        preset: a preset name (``nestedmemory info`` lists them)
        size: a size of ``nestedmemory.models.SIZES`` or of the training sizes (``small``)
        overrides: NestedMemoryConfig fields to set, e.g. ``{hidden_size: 256, num_layers: 6}``
        memory: fields of the preset's memory rule to change, e.g. ``{chunk_size: 16}``
    """

    preset: str = DEFAULT_PRESET
    size: str = DEFAULT_SIZE
    overrides: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    FLAGS = "model."

    def check(self) -> None:
        """Known preset and size; ``overrides`` keys that are config fields, ``memory`` keys of the preset's rule
        (a typo would otherwise be saved with the run and silently do nothing, or fail deep in the model)."""
        check_names(f"{self.FLAGS}preset", "preset", [self.preset], PRESETS)
        check_names(f"{self.FLAGS}size", "size", [self.size], [*SIZES, *TRAIN_SIZES])
        check_names(f"{self.FLAGS}overrides", "key", self.overrides, CONFIG_FIELDS)
        check_names(f"{self.FLAGS}memory", "key", self.memory, memory_keys(PRESETS[self.preset][0]))


@dataclass
class DataConfig(Settings):
    """The training text.

    Args:
        path: ``shakespeare`` (embedded), a text / .jsonl / .parquet file, a folder of them, or a ``datasets``
            folder saved with ``save_to_disk``
        tokenizer: ``byte``, or a local ``tokenizer.json`` (BPE or any ``tokenizers`` model)
        text_field: the text column of JSONL / Parquet / datasets rows
        separator: text put between documents
        seq_len: tokens per training sequence
        val_tokens: the first tokens of the stream, held out for validation
        shuffle_buffer: training blocks shuffled together (1: stream order)
    """

    path: str = "shakespeare"
    tokenizer: str = "byte"
    text_field: str = "text"
    separator: str = "\n\n"
    seq_len: int = 256
    val_tokens: int = 65536
    shuffle_buffer: int = 1024

    FLAGS = "data."
    LIMITS = {"seq_len": Limit(2), "val_tokens": AT_LEAST_ONE, "shuffle_buffer": AT_LEAST_ONE}


@dataclass
class OptimConfig(Settings):
    """The optimizer and learning-rate schedule (linear warm-up, then cosine decay to ``min_lr_ratio · lr``).

    Args:
        name: ``adamw`` (torch), or ``muon`` / ``m3`` from ``nestedmemory.optim``
        lr: peak learning rate
        weight_decay: decoupled weight decay of matrices and embeddings (none on vectors: norms, biases, gates)
        warmup_steps: steps of linear warm-up
        min_lr_ratio: final learning rate as a fraction of ``lr``
        grad_clip: maximum global gradient norm (0: no clipping)
        options: further keyword arguments of the optimizer, e.g. ``{betas: [0.9, 0.99]}``
    """

    name: Literal["adamw", "muon", "m3"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    options: dict = field(default_factory=dict)

    FLAGS = "optim."
    LIMITS = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "min_lr_ratio": FRACTION,
              "grad_clip": NON_NEGATIVE}

    def check(self) -> None:
        """``options``: keywords of the optimizer's constructor, with values it accepts — tried on a dummy
        parameter, so the optimizer's own checks run now, not after the model is built."""
        from .optim import optimizer_class  # here: that module imports this one

        optimizer, defaults = optimizer_class(self.name)
        keywords = set(inspect.signature(optimizer).parameters) - {"params", "lr"}
        check_names(f"{self.FLAGS}options", "key", self.options, keywords)
        try:
            optimizer([torch.zeros(2, 2, requires_grad=True)], lr=self.lr, **{**defaults, **self.options})
        except (TypeError, ValueError) as error:
            raise InvalidSetting(f"--{self.FLAGS}options {self.options}: {error}") from None


@dataclass
class TNTConfig(Settings):
    """TNT's two-stage schedule (TNT §3.3; ``tnt`` models only).

    Args:
        stage2_steps: the last steps of the run train with ``local_chunk_sizes`` (stage 2; 0: one stage)
        local_chunk_sizes: the stage-2 chunk size of every local memory, e.g. ``[1]``
    """

    stage2_steps: int = 0
    local_chunk_sizes: list[int] | None = None

    FLAGS = "tnt."
    LIMITS = {"stage2_steps": NON_NEGATIVE}


@dataclass
class SampleConfig(Settings):
    """Sampling.

    Args:
        prompt: text the sample continues
        max_new_tokens: tokens to generate
        temperature: softmax temperature (0: greedy)
        top_k: sample among the k most likely tokens (0: all)
        seed: random seed of the sampler
    """

    prompt: str = "ROMEO:\n"
    max_new_tokens: int = 300
    temperature: float = 0.8
    top_k: int = 0
    seed: int = 0

    FLAGS = "sample."
    LIMITS = {"max_new_tokens": AT_LEAST_ONE, "temperature": NON_NEGATIVE, "top_k": NON_NEGATIVE,
              "seed": NON_NEGATIVE}


@dataclass
class TrainConfig(Settings):
    """Train a model, evaluate its validation loss, print a sample; write a run folder.

    Args:
        model: the model
        data: the training text
        optim: the optimizer
        sample: the sample printed at the end
        tnt: TNT's stage 2 (smaller local chunks for the last steps)
        out: run folder (default ``runs/<preset>-<size>-<date>-<time>``)
        resume: continue from a checkpoint, or the latest checkpoint of a run folder (with ``out``: into a new folder)
        max_steps: optimizer steps
        batch_size: sequences per step, over all processes
        seed: random seed of initialisation and data order
        log_every: steps between metrics records
        eval_every: steps between validation passes (0: at the end only)
        save_every: steps between checkpoints (0: at the end only)
        keep_checkpoints: checkpoints kept in the run folder (the newest)
        skip_nonfinite: skip up to N steps whose loss or gradient is NaN or infinite (no update; counted as
            ``skipped`` in the metrics), then stop (0: stop at the first)
        precision: ``bf16`` runs the model under bfloat16 autocast
        compile: ``torch.compile`` the model
        parallel: under ``torchrun``: ``ddp`` (replicas) or ``fsdp`` (FSDP2 ``fully_shard``)
        device: ``cpu``, ``cuda`` (default: cuda if available)
        progress: show a progress bar
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tnt: TNTConfig = field(default_factory=TNTConfig)
    out: str | None = None
    resume: str | None = None
    max_steps: int = 400
    batch_size: int = 8
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    save_every: int = 100
    keep_checkpoints: int = 2
    skip_nonfinite: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    device: str | None = None
    progress: bool = True

    LIMITS = {"max_steps": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "seed": NON_NEGATIVE, "log_every": AT_LEAST_ONE,
              "eval_every": NON_NEGATIVE, "save_every": NON_NEGATIVE, "keep_checkpoints": AT_LEAST_ONE,
              "skip_nonfinite": NON_NEGATIVE}

    def check(self) -> None:
        """A device this machine has; an ``out`` that can be a folder."""
        check_device("device", self.device)
        check_folder("out", self.out)


#: fields a resumed run may change: where and how it runs and reports, not what it computes (``max_steps``
#: changes the schedule from there on).
RESUMABLE_FIELDS = frozenset({"out", "resume", "max_steps", "log_every", "eval_every", "save_every",
                              "keep_checkpoints", "skip_nonfinite", "compile", "parallel", "device", "progress",
                              "sample"})


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"model": {"size": "tiny"}}`` → ``{"model.size": "tiny"}`` (dicts of the config become dotted keys)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def incompatible(saved: dict, current, resumable: frozenset = RESUMABLE_FIELDS) -> list[str]:
    """The settings of ``current`` (a settings dataclass) that differ from the checkpoint's ``saved`` config
    (``asdict`` form), outside ``resumable`` (the fields a resumed run may change), as ``"key: saved → current"``
    lines."""
    before, after = flatten(saved), flatten(dataclasses.asdict(current))
    keys = sorted(k for k in before.keys() | after.keys() if k.split(".")[0] not in resumable)
    changed = [k for k in keys if _normal(before.get(k)) != _normal(after.get(k))]
    return [f"{k}: {before.get(k)!r} → {after.get(k)!r}" for k in changed]


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def model_config(model: ModelConfig, vocab_size: int) -> NestedMemoryConfig:
    """The config of ``model``, its vocabulary sized to the tokenizer's ``vocab_size`` unless ``overrides``
    set a (larger) one. Raises :class:`UserError` naming the problem."""
    base, size_overrides, size_memory, size_cms = TRAIN_SIZES.get(model.size, (model.size, {}, {}, {}))
    overrides = {**size_overrides, "vocab_size": vocab_size, **model.overrides}
    if overrides["vocab_size"] < vocab_size:
        raise UserError(f"model vocab_size {overrides['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    try:
        config = preset_config(model.preset, base, **overrides)
        if model.memory and config.memory is None:
            raise UserError(f"preset {model.preset!r} has no memory rule for model.memory to change")
        changes = {}
        if config.memory is not None and (size_memory or model.memory):
            changes["memory"] = {**config.memory, **size_memory, **model.memory}
        if config.cms is not None and size_cms and "cms" not in model.overrides:
            changes["cms"] = {**config.cms, **size_cms}
        if changes:
            config = preset_config(model.preset, base, **overrides, **changes)
    except ValueError as error:
        raise UserError(str(error)) from error
    return config
