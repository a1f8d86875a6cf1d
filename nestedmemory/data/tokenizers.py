"""Tokenizers: raw UTF-8 bytes (the default; vocabulary 256) or a BPE / any ``tokenizers`` model read from a local
``tokenizer.json``. Both encode to NumPy ``int64`` arrays, so long texts pack without Python lists.

Both save into a model folder as a Hugging Face tokenizer (``tokenizer.json`` + ``tokenizer_config.json``, written by
``transformers``), so ``AutoTokenizer.from_pretrained(folder)`` — and through it ``lm_eval --model hf`` — reads the
folder without this package and encodes text to the ids the model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["BYTE", "TOKENIZER_FILE", "ByteTokenizer", "FileTokenizer", "load_tokenizer"]

BYTE = "byte"
#: the file name a ``tokenizers`` model has in a checkpoint or model folder.
TOKENIZER_FILE = "tokenizer.json"
#: the ``transformers`` settings beside it (special tokens, class).
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: the ``tokenizer_config.json`` key whose value ``"byte"`` marks a folder's tokenizer as the byte tokenizer.
MARKER = "nestedmemory_tokenizer"
#: the byte tokenizer's one special token — beginning, end and padding of a text: the NUL byte (id 0), which text
#: does not hold (a data file starting with one is refused as binary), so no id beyond the 256 bytes is needed.
NUL = "\x00"


class ByteTokenizer:
    """Each UTF-8 byte is a token (ids 0..255); decoding replaces invalid byte sequences."""

    name = BYTE
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory) -> None:
        """Write the byte tokenizer as a Hugging Face tokenizer (:func:`_byte_level_tokenizer`, with NUL as bos, eos
        and pad), marked in ``tokenizer_config.json`` so that :func:`load_tokenizer` reads it back as bytes."""
        _save_for_transformers(_byte_level_tokenizer(), directory, bos_token=NUL, eos_token=NUL, pad_token=NUL,
                               **{MARKER: BYTE})


def _byte_level_tokenizer():
    """:class:`ByteTokenizer` as a ``tokenizers`` model, for ``transformers``: the same ids both ways.

    A BPE without merges over GPT-2's 256 byte characters (the ``ByteLevel`` pre-tokenizer maps each UTF-8 byte of
    the text to one, without a prefix space; the ``ByteLevel`` decoder maps them back, invalid sequences
    replaced), so byte ``b`` is token ``b``. Id 0 is the NUL character itself, a special token: the added-token
    pass catches a NUL before the pre-tokenizer (which so never needs byte 0's character), and encoding, decoding and
    ``bos_token_id`` agree on 0. Nothing is prepended or appended to a text, as in training."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {NUL: 0} | {character: b for b, character in enumerate(_byte_characters()) if b}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(NUL, special=True, normalized=False)])
    return tokenizer


def _byte_characters() -> list[str]:
    """GPT-2's character for each byte 0..255, the ``ByteLevel`` pre-tokenizer's: a printable Latin-1 byte stands
    for itself, each other byte, in order, for the next character from U+0100."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


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
        """Write this tokenizer as a Hugging Face tokenizer, with the special tokens its file defines and no other."""
        _save_for_transformers(self._tokenizer, directory)


def _save_for_transformers(tokenizer, directory, **settings) -> None:
    """Write the ``tokenizers`` model ``tokenizer`` into ``directory`` as ``transformers`` does (``tokenizer.json``,
    ``tokenizer_config.json`` with ``settings``), so ``AutoTokenizer.from_pretrained(directory)`` loads it."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **settings).save_pretrained(directory)


def load_tokenizer(spec: str | Path = BYTE) -> ByteTokenizer | FileTokenizer:
    """``"byte"``, a ``tokenizer.json`` file, or a folder holding one (a checkpoint, a saved model); a folder
    whose tokenizer :meth:`ByteTokenizer.save` wrote, or without ``tokenizer.json`` (older folders), is read with
    the byte tokenizer."""
    if str(spec) == BYTE:
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        return ByteTokenizer() if _holds_bytes(path) else FileTokenizer(path / TOKENIZER_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return FileTokenizer(path)


def _holds_bytes(folder: Path) -> bool:
    """Whether model folder ``folder`` holds the byte tokenizer: no ``tokenizer.json``, or one marked as bytes."""
    if not (folder / TOKENIZER_FILE).is_file():
        return True
    settings = folder / TOKENIZER_CONFIG_FILE
    return settings.is_file() and json.loads(settings.read_text(encoding="utf-8")).get(MARKER) == BYTE
