"""Resuming a run, one way for every trainer (language models, time series, graphs): which checkpoint, whether the
settings allow it, which run folder, and the random state.

* :func:`load_resumed` reads the checkpoint ``--resume`` names and refuses one of another kind of run or with
  settings a resumed run may not change (:func:`~nestedmemory.train.config.incompatible`);
* :func:`run_folder` picks the folder before anything is written: the resumed checkpoint's own run folder if it is
  its newest checkpoint (continuing it), else a new or empty folder (a branch, or a fresh run); never one a live
  process holds;
* :func:`rng_state` / :func:`restore_rng`: the CPU and CUDA generators, so a resumed run draws what the
  uninterrupted one would have; :func:`restore` loads an epoch trainer's weights, optimizer, schedule and RNG.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, lock
from .config import incompatible
from .errors import CheckpointError, UserError

__all__ = ["load_resumed", "run_folder", "restore", "rng_state", "restore_rng"]


def load_resumed(resume: str | Path, config, resumable: frozenset, what: str = "run",
                 key: str | None = None) -> tuple[Path, dict, dict]:
    """``(checkpoint folder, best weights, trainer state)`` of the checkpoint or run folder ``resume``.

    ``key``: a field every config of this kind of run has (``None``: no check); without it the checkpoint is
    refused as not one ``of a {what}``. Settings of ``config`` that differ from the saved ones outside
    ``resumable`` raise :class:`CheckpointError` listing them."""
    source = checkpoint.resolve(resume)
    weights, state = checkpoint.load(source)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or (key is not None and (key not in saved or "weights" not in state)):
        raise CheckpointError(f"{source} is not a checkpoint of a {what}")
    problems = incompatible(saved, config, resumable)
    if problems:
        raise CheckpointError(f"incompatible config on resume from {source}: " + "; ".join(problems))
    return source, weights, state


def run_folder(source: Path | None, out: str | None, default: str, command: str, ensure_free=lock.ensure_free) -> Path:
    """The run folder: ``source``'s (the resumed checkpoint's) when ``out`` is unset or the same folder, if
    ``source`` is its newest checkpoint (else :class:`UserError`: branch with ``--out``); otherwise ``out`` or
    ``default``, which must be new or empty. ``ensure_free`` refuses a folder a live process holds (the
    distributed trainer runs it on its main process only); ``command`` is named in the hint to resume."""
    if source is not None and (out is None or Path(out).resolve() == source.parent.resolve()):
        ensure_free(source.parent)
        if checkpoint.checkpoints(source.parent)[-1] != source:
            raise UserError(f"{source} is not the newest checkpoint of {source.parent}; pass --out NEW_FOLDER to "
                            "branch a new run from it")
        return source.parent
    run_dir = Path(out or default)
    ensure_free(run_dir)
    if run_dir.exists() and any(path.name != lock.LOCK_FILE for path in run_dir.iterdir()):
        raise UserError(f"run folder {run_dir} already exists; continue it with {command} --resume {run_dir} or "
                        "choose another --out")
    return run_dir


def rng_state() -> dict:
    """The CPU generator's state and every CUDA device's (empty without CUDA)."""
    return dict(cpu=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def restore(state: dict, model, optimizer, schedule=None) -> None:
    """Load an epoch trainer's ``state`` (time series, graphs): the current ``weights`` into ``model``, the
    ``optimizer``'s state, the ``schedule``'s (if given) and the random state."""
    model.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    restore_rng(state["rng"])


def restore_rng(state: dict) -> None:
    """Set the generators to :func:`rng_state`'s ``state`` (CUDA only where both sides have it)."""
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
