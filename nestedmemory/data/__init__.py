"""Data: the embedded corpus, tokenizers (bytes, local ``tokenizer.json``), streamed text sources (text, JSONL,
Parquet, saved ``datasets``), sequence packing, and :class:`TextData`, the language-modelling stream that
training and evaluation read."""

from .corpus import play_names, shakespeare
from .files import BUILTIN, documents
from .packing import batched, pack, shuffled, skip_tokens, take_tokens, token_chunks
from .stream import TextData
from .tokenizers import BYTE, TOKENIZER_FILE, ByteTokenizer, FileTokenizer, load_tokenizer

__all__ = ["BUILTIN", "BYTE", "TOKENIZER_FILE", "ByteTokenizer", "FileTokenizer", "TextData", "batched", "documents",
           "load_tokenizer", "pack", "play_names", "shakespeare", "shuffled", "skip_tokens", "take_tokens",
           "token_chunks"]
