"""nestedmemory: the Nested Learning family of sequence models (Titans, Miras, ATLAS, Hope, ...) in PyTorch."""

from .memory import MemoryRule, MemoryState, memorize

__version__ = "0.1.0"
__all__ = ["MemoryRule", "MemoryState", "memorize", "__version__"]
