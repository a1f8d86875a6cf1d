"""Tokenizers: raw UTF-8 bytes (the default; vocabulary 256, no file) or a BPE / any ``tokenizers`` model read
from a local ``tokenizer.json``. Both encode to NumPy ``int64`` arrays, so long texts pack without Python lists."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

__all__ = ["BYTE", "TOKENIZER_FILE", "ByteTokenizer", "FileTokenizer", "load_tokenizer"]

BYTE = "byte"
#: the file name a ``tokenizers`` model has in a checkpoint or model folder.
TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """Each UTF-8 byte is a token (ids 0..255); decoding replaces invalid byte sequences."""

    name = BYTE
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory) -> None:
        """Nothing to write: a model folder without ``tokenizer.json`` is read with the byte tokenizer."""


class FileTokenizer:
    """A ``tokenizers`` model (BPE, Unigram, WordPiece) from a local ``tokenizer.json``."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as error:  # the Rust library raises a bare Exception for unreadable files
            raise ValueError(f"cannot read tokenizer {self.path}: {error}") from error
        self.name = str(self.path)
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory) -> None:
        shutil.copyfile(self.path, Path(directory) / TOKENIZER_FILE)


def load_tokenizer(spec: str | Path = BYTE) -> ByteTokenizer | FileTokenizer:
    """``"byte"``, a ``tokenizer.json`` file, or a folder holding one (a checkpoint, a saved model; a folder
    without one is read with the byte tokenizer, as written by :meth:`ByteTokenizer.save`)."""
    if str(spec) == BYTE:
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / TOKENIZER_FILE
        return FileTokenizer(path) if path.is_file() else ByteTokenizer()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return FileTokenizer(path)
