"""The associative-memory core: rules, the functional ``memorize`` op and its state (SPEC §2, §10.1)."""

from .api import memorize, recall
from .maps import newton_schulz
from .rule import MemoryRule
from .state import MemoryState

__all__ = ["MemoryRule", "MemoryState", "memorize", "newton_schulz", "recall"]
