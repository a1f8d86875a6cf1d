"""Data: the embedded corpus, tokenizers, text datasets and packing."""

from .corpus import play_names, shakespeare

__all__ = ["play_names", "shakespeare"]
