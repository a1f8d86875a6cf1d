"""The run's metrics: ``metrics.jsonl`` (one JSON record per line: training records with ``loss``, validation
records with ``val_loss``) and ``loss.png``, the loss curves drawn from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS = "metrics.jsonl"
PLOT = "loss.png"


def read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def restart(source: Path, destination: Path, step: int) -> None:
    """Make ``destination`` hold the records of ``source`` up to ``step`` (a resumed run goes on from there),
    replacing it atomically."""
    temporary = destination.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(r) + "\n" for r in read(source) if r["step"] <= step)
    os.replace(temporary, destination)


def plot(records: list[dict], path: Path, title: str, ylabel: str = "loss (nats / token)") -> None:
    """Training and validation loss against step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for key, label, style in (("loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            axes.plot(*zip(*points), style, label=label, markersize=4)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
