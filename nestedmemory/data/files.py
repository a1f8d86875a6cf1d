"""Text sources, streamed: the embedded corpus, local text / JSONL / Parquet files (or folders of them) and
``datasets`` saved with ``save_to_disk``. A source is an iterable of *documents*; a document is an iterable of
text pieces, so a text file larger than memory is read a few megabytes at a time, at line boundaries."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .corpus import shakespeare

__all__ = ["BUILTIN", "TEXT_SUFFIXES", "documents"]

Document = Iterable[str]
#: names of the embedded corpora (no file needed).
BUILTIN = {"shakespeare": lambda: shakespeare(max_chars=1_000_000)}
TEXT_SUFFIXES = (".txt", ".text", ".md")
DATA_SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".parquet")
#: files that mark a folder written by ``datasets``' ``save_to_disk``.
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
PIECE_CHARS = 1 << 22
#: the first bytes of a text or JSONL file that must be UTF-8 text (a binary file given by mistake is refused).
SNIFF_BYTES = 1 << 16


def documents(path: str | Path, text_field: str = "text") -> Iterator[Document]:
    """The documents of ``path``: a :data:`BUILTIN` name, a file (text: one document; ``.jsonl`` / ``.parquet``:
    one per row, its ``text_field``), a ``datasets`` folder (its ``train`` split if it holds several), or a folder
    of such files (recursively, in name order). A missing path raises here, not when the stream is first read."""
    if str(path) in BUILTIN:
        return iter([[BUILTIN[str(path)]()]])
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir() and any((path / marker).is_file() for marker in DATASETS_MARKERS):
        return _saved_dataset(path, text_field)
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no data files ({', '.join(DATA_SUFFIXES)}) under {path}")
    return (document for file in files for document in _file(file, text_field))


def _file(path: Path, text_field: str) -> Iterator[Document]:
    if path.suffix == ".jsonl":
        yield from _jsonl(path, text_field)
    elif path.suffix == ".parquet":
        yield from _parquet(path, text_field)
    else:
        yield _text_pieces(path)


def _check_text(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless its first :data:`SNIFF_BYTES` bytes are UTF-8 text: a NUL byte
    or an invalid UTF-8 sequence there means a binary file (an archive, an image, a checkpoint), which would
    otherwise train as a stream of replacement characters. Later bytes are read leniently (a stray bad byte deep
    in a large corpus becomes U+FFFD)."""
    with open(path, "rb") as file:
        head = file.read(SNIFF_BYTES)
    if b"\0" in head:
        raise ValueError(f"{path} is not a text file: it holds a NUL byte at offset {head.index(0)}")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: invalid byte at offset {error.start}") from None


def _text_pieces(path: Path) -> Iterator[str]:
    _check_text(path)
    with open(path, encoding="utf-8", errors="replace") as file:
        piece, size = [], 0
        for line in file:
            piece.append(line)
            size += len(line)
            if size >= PIECE_CHARS:
                yield "".join(piece)
                piece, size = [], 0
        if piece:
            yield "".join(piece)


def _field(row, text_field: str, where: str) -> str:
    if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
        raise ValueError(f"{where} has no text field {text_field!r}")
    return row[text_field]


def _jsonl(path: Path, text_field: str) -> Iterator[Document]:
    _check_text(path)
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number} is not valid JSON ({error.msg})") from error
                yield [_field(row, text_field, f"{path}:{number}")]


def _parquet(path: Path, text_field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError("reading Parquet needs pyarrow: pip install 'nestedmemory[data]'") from error
    file = pq.ParquetFile(path)
    if text_field not in file.schema_arrow.names:
        raise ValueError(f"{path} has no column {text_field!r} (columns: {file.schema_arrow.names})")
    for batch in file.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            yield [text or ""]


def _saved_dataset(path: Path, text_field: str) -> Iterator[Document]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as error:
        raise ImportError("reading a saved dataset needs datasets: pip install 'nestedmemory[data]'") from error
    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{path} holds splits {list(dataset)}; point at one of them (no 'train' split)")
        dataset = dataset["train"]
    if text_field not in dataset.column_names:
        raise ValueError(f"{path} has no column {text_field!r} (columns: {dataset.column_names})")
    for batch in dataset.iter(batch_size=1024):
        for text in batch[text_field]:
            yield [text or ""]
