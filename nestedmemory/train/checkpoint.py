"""Checkpoints: one folder per step, ``<run>/checkpoint-000100/``, that is also a Hugging Face model folder —
``config.json`` + ``model.safetensors`` + the model's code (``from_pretrained`` reads it, with
``trust_remote_code=True`` also without this package), the tokenizer, and ``trainer_state.pt`` (optimizer,
scheduler, RNG, data position, the run's config).

A checkpoint is written into a hidden temporary folder, its files flushed to disk, then renamed into place
(``os.replace``, atomic): a crash or Ctrl-C leaves either the complete checkpoint or none, and an existing one is
never written over. Rotation keeps the newest ``keep`` (at least one: the checkpoint just written) and deletes
only checkpoints older than it.

The run folder is itself a model folder of its newest checkpoint: every file of that checkpoint but the trainer
state is linked there (``<run>/config.json → checkpoint-000100/config.json``, …), so ``from_pretrained(<run>)``,
``nestedmemory generate <run>`` and ``lm_eval --model hf --model_args pretrained=<run>`` read the newest weights."""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..models import NestedMemoryConfig
from ..models.config import EARLIER_DEFAULTS
from .errors import CheckpointError, NonFiniteError

WEIGHTS = "model.safetensors"
STATE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def checkpoint_step(path: Path) -> int:
    """The step of checkpoint folder ``path`` (``checkpoint-000100`` → 100)."""
    return int(_NAME.match(path.name).group(1))


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of ``run_dir``, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: the newest checkpoint of a run folder (whose own links also look like
    a model folder), or itself."""
    path = Path(path)
    found = checkpoints(path)
    if found:
        return found[-1]
    if (path / WEIGHTS).exists() or (path / STATE).exists():
        return path
    raise CheckpointError(f"no checkpoint at {path}" if path.exists() else f"checkpoint not found: {path}")


def save(run_dir: Path, step: int, model_config, model_state: dict, tokenizer, trainer_state: dict,
         keep: int) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` (skipped if it exists) — the model's ``PretrainedConfig`` and full
    weights, the tokenizer, the trainer state — then :func:`rotate`. ``keep`` < 1 raises ``ValueError`` before
    anything is written or deleted."""

    def write(folder: Path) -> None:
        model_config.save_pretrained(folder)
        save_weights(model_state, folder / WEIGHTS)
        tokenizer.save(folder)
        torch.save(trainer_state, folder / STATE)

    return save_folder(run_dir, step, write, keep)


def save_folder(run_dir: Path, step: int, write, keep: int) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` (skipped if it exists) atomically: ``write(folder)`` fills a hidden
    temporary folder, whose files are flushed to disk before it is renamed into place; then :func:`link_newest`
    and :func:`rotate`. The checkpoint writer of every trainer (``save`` above; the time-series trainer's). ``keep``
    < 1 raises ``ValueError`` before anything is written or deleted."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1 (the checkpoint just written is kept), got {keep}")
    final = run_dir / checkpoint_name(step)
    if final.exists():
        return final
    temporary = run_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    write(temporary)
    for file in temporary.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temporary, final)
    link_newest(run_dir)
    rotate(run_dir, step, keep)
    return final


def save_run(run_dir: Path, step: int, model_config: dict, weights: dict, trainer_state: dict, keep: int) -> Path:
    """Checkpoint ``step`` of a run of the time-series / graph trainers (:func:`save_folder`): ``config.json``
    (``model_config``, from which the model is rebuilt), ``weights`` as safetensors, ``trainer_state``."""

    def write(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps(model_config, indent=2))
        save_weights(weights, folder / WEIGHTS)
        torch.save(trainer_state, folder / STATE)

    return save_folder(run_dir, step, write, keep)


def last_finite_state(run_dir: Path) -> str:
    """Where a run stopped by a non-finite value can resume: its newest checkpoint (or none was written)."""
    saved = checkpoints(run_dir)
    return (f"the newest checkpoint of {run_dir}, {saved[-1].name}, is the last finite state" if saved
            else f"no checkpoint was written to {run_dir}")


def check_update(loss: float, grad_norm: float, where: str, run_dir: Path) -> None:
    """Raise :class:`NonFiniteError` (before ``optimizer.step()``) if the loss or gradient norm of the step
    ``where`` names is NaN or infinite: the update is not applied, the last finite state is named."""
    bad = " and ".join(f"the {name} is {v}" for name, v in (("loss", loss), ("gradient norm", grad_norm))
                       if not math.isfinite(v))
    if bad:
        raise NonFiniteError(f"{where}: {bad}; the update was not applied. Nothing was saved: "
                             f"{last_finite_state(run_dir)}. Try a lower --lr in a new run")


def check_scores(scores: dict[str, dict], where: str, run_dir: Path | None = None, skip=()) -> None:
    """Raise :class:`NonFiniteError` naming the first NaN or infinite score of ``{split: {name: value}}`` (names in
    ``skip`` aside) at ``where``; in a training run (``run_dir``), also the last finite state."""
    for split, values in scores.items():
        for name, value in values.items():
            if isinstance(value, numbers.Real) and name not in skip and not math.isfinite(value):
                saved = f" Nothing was saved: {last_finite_state(run_dir)}" if run_dir is not None else ""
                raise NonFiniteError(f"{where}: the {split} {name} is {value} (not finite): the model's weights or "
                                     f"outputs are NaN or infinite.{saved}")


def finite_weights(model, step: int, run_dir: Path) -> dict:
    """``model``'s weights copied to the CPU, or :class:`NonFiniteError` if any is NaN or infinite: such weights
    are never written."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()):
        raise NonFiniteError(f"step {step}: the weights are NaN or infinite, no checkpoint was written. "
                             f"{last_finite_state(run_dir)}")
    return weights


def save_weights(state: dict, path: Path) -> None:
    """``state`` (name → tensor) as a safetensors file."""
    save_file({name: t.contiguous() for name, t in state.items()}, path, metadata={"format": "pt"})


def link_newest(run_dir: Path) -> None:
    """Link every file of the newest checkpoint but the trainer state into ``run_dir`` (relative symlinks, each
    replaced atomically), and remove links to checkpoint files the newest one lacks."""
    newest = checkpoints(run_dir)[-1]
    names = {file.name for file in newest.iterdir() if file.name != STATE}
    for name in names:
        temporary = run_dir / f".{name}.link-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(Path(newest.name) / name)
        os.replace(temporary, run_dir / name)
    for link in run_dir.iterdir():
        if link.is_symlink() and link.name not in names and _NAME.match(Path(os.readlink(link)).parts[0]):
            link.unlink()


def rotate(run_dir: Path, step: int, keep: int) -> None:
    """Keep checkpoint ``step`` and the newest ``keep − 1`` older ones; delete the older rest. Checkpoints newer
    than ``step`` are not this writer's to judge and stay."""
    older = [path for path in checkpoints(run_dir) if checkpoint_step(path) < step]
    for old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old)


def trained_forms(directory: Path, config: NestedMemoryConfig) -> NestedMemoryConfig:
    """``config`` with the architecture forms (:data:`~nestedmemory.models.config.EARLIER_DEFAULTS`' fields: MAC's
    queries, the MAG / MAL memory's persistent tokens) of the checkpoint in ``directory``: a run started before a
    form became the default resumes as the model it was trained as."""
    saved = NestedMemoryConfig.from_pretrained(directory)
    return type(config).from_dict({**config.to_dict(), **{key: getattr(saved, key) for key in EARLIER_DEFAULTS}})


def load(directory: Path) -> tuple[dict, dict]:
    """``(weights, trainer_state)`` of a checkpoint folder; a missing, truncated or corrupt file raises
    :class:`CheckpointError` naming it."""
    weights, state = directory / WEIGHTS, directory / STATE
    for file in (weights, state):
        if not file.is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {file.name} is missing")
    try:
        model_state = load_file(weights)
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError, ValueError)
        raise CheckpointError(f"checkpoint file {weights} is corrupt or truncated ({error})") from error
    return model_state, trainer_state(directory)


def trainer_state(directory: Path, mmap: bool = False) -> dict:
    """The trainer state of a checkpoint folder (``mmap``: tensors mapped, not read — for its settings alone); a
    missing, truncated or corrupt file raises :class:`CheckpointError` naming it."""
    state = directory / STATE
    if not state.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: {STATE} is missing")
    try:
        return torch.load(state, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # pickle / zip errors of a damaged file have no common type
        raise CheckpointError(f"checkpoint file {state} is corrupt or truncated ({error})") from error
