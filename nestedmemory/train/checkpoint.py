"""Checkpoints: one folder per step, ``<run>/checkpoint-000100/``, that is also a Hugging Face model folder —
``config.json`` + ``model.safetensors`` (``from_pretrained`` reads it), the tokenizer when it has a file, and
``trainer_state.pt`` (optimizer, scheduler, RNG, data position, the run's config).

A checkpoint is written into a hidden temporary folder, its files flushed to disk, then renamed into place
(``os.replace``, atomic): a crash or Ctrl-C leaves either the complete checkpoint or none, and an existing one is
never written over. Rotation keeps the newest ``keep`` (at least one: the checkpoint just written) and deletes
only checkpoints older than it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

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
    """The checkpoint folder ``path`` names: itself, or the newest checkpoint of a run folder."""
    path = Path(path)
    if (path / WEIGHTS).exists() or (path / STATE).exists():
        return path
    found = checkpoints(path)
    if not found:
        raise CheckpointError(f"no checkpoint at {path}" if path.exists() else f"checkpoint not found: {path}")
    return found[-1]


def save(run_dir: Path, step: int, model_config, model_state: dict, tokenizer, trainer_state: dict,
         keep: int) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` (skipped if it exists) — the model's ``PretrainedConfig`` and full
    weights, the tokenizer, the trainer state — then :func:`rotate`. ``keep`` < 1 raises ``ValueError`` before
    anything is written or deleted."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1 (the checkpoint just written is kept), got {keep}")
    final = run_dir / checkpoint_name(step)
    if final.exists():
        return final
    temporary = run_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    model_config.save_pretrained(temporary)
    save_file({name: t.contiguous() for name, t in model_state.items()}, temporary / WEIGHTS, metadata={"format": "pt"})
    tokenizer.save(temporary)
    torch.save(trainer_state, temporary / STATE)
    for file in temporary.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temporary, final)
    rotate(run_dir, step, keep)
    return final


def rotate(run_dir: Path, step: int, keep: int) -> None:
    """Keep checkpoint ``step`` and the newest ``keep − 1`` older ones; delete the older rest. Checkpoints newer
    than ``step`` are not this writer's to judge and stay."""
    older = [path for path in checkpoints(run_dir) if checkpoint_step(path) < step]
    for old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old)


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
    try:
        trainer_state = torch.load(state, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle / zip errors of a damaged file have no common type
        raise CheckpointError(f"checkpoint file {state} is corrupt or truncated ({error})") from error
    return model_state, trainer_state
