"""Results files: a Markdown table with its JSON twin, and the needle-in-a-haystack heatmap (depth × length) as a
PNG (matplotlib, imported only here and only when called)."""

from __future__ import annotations

import json
from pathlib import Path


def percent(value) -> str:
    """An accuracy in [0, 1] as a percentage with one decimal ("—" for None)."""
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(path, *, title: str, header: list[str], rows: list[list], data, notes: str = "") -> tuple[Path, Path]:
    """Write ``path`` (Markdown: ``# title``, the table, ``notes``) and the same name with ``.json`` (``data``, the
    full results). Returns both paths."""
    if len(set(map(len, rows)) | {len(header)}) != 1:
        raise ValueError("rows must have as many cells as header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" + markdown_table(header, rows) + (f"\n{notes.strip()}\n" if notes.strip() else "")
    path.write_text(text, encoding="utf-8")
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path, json_path


def write_keeping_notes(path, text: str, mark: str) -> None:
    """Write ``text`` to ``path``, then the hand-written notes the file already has after the line ``mark`` (a
    benchmark's report rewrites its tables and keeps what people wrote below them)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    notes = old[old.index(mark):] if mark in old else mark + "\n"
    path.write_text(text + "\n" + notes, encoding="utf-8")


def write_keeping_notes_with_json(path, text: str, data, mark: str) -> None:
    """:func:`write_keeping_notes` of ``text`` at ``path`` (its folder made), and ``data`` as the JSON twin."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_notes(path, text, mark)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def models_benchmark_main(argv, *, doc: str, models: list[str], settings: dict, run, markdown, out, mark: str):
    """A benchmark's command line: ``--quick`` (``settings["quick"]`` instead of ``settings["full"]``), ``--models``
    (a subset of ``models``), ``--out``; runs ``run(settings, models)``, prints ``markdown(data)`` and writes both
    (:func:`write_keeping_notes_with_json`)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{settings['quick']}")
    parser.add_argument("--models", nargs="+", choices=models, default=models)
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    data = run(settings["quick" if args.quick else "full"], args.models)
    text = markdown(data)
    print(text)
    write_keeping_notes_with_json(args.out, text, data, mark)


def needle_heatmap(grid: list[dict], path, *, title: str = "Needle in a haystack") -> Path:
    """A depth × length heatmap of accuracy from the ``grid`` records (``depth``, ``length``, ``accuracy``) of
    :func:`nestedmemory.tasks.niah.evaluate`, saved as a PNG at ``path``."""
    import matplotlib  # optional dependency: imported only here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grid:
        raise ValueError("grid must hold at least one (depth, length, accuracy) record")
    depths = sorted({cell["depth"] for cell in grid})
    lengths = sorted({cell["length"] for cell in grid})
    values = [[float("nan")] * len(lengths) for _ in depths]
    for cell in grid:
        values[depths.index(cell["depth"])][lengths.index(cell["length"])] = 100 * cell["accuracy"]
    figure, axes = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    image = axes.imshow(values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    axes.set_xticks(range(len(lengths)), [str(length) for length in lengths])
    axes.set_yticks(range(len(depths)), [f"{100 * depth:g}%" for depth in depths])
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("needle depth")
    axes.set_title(title)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            axes.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
