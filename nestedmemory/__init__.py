"""nestedmemory: the Nested Learning family of sequence models (Titans, Miras, ATLAS, Hope, ...) in PyTorch.

Importing it registers the ``nestedmemory`` model type with ``transformers``' ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``, so a saved model folder loads with ``from_pretrained`` after ``import nestedmemory``."""

from . import models  # noqa: F401  (the Auto class registration)
from .memory import MemoryRule, MemoryState, memorize

__version__ = "0.1.0"
__all__ = ["MemoryRule", "MemoryState", "memorize", "__version__"]
