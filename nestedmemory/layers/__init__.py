"""Token mixers built on the memory core, with the flash-linear-attention forward signature::

    out, _, past_key_values = layer(hidden_states, attention_mask=None, past_key_values=None, use_cache=False)

``hidden_states``: ``[B, T, dim]``; ``attention_mask``: ``[B, T_total]`` (1 = token, 0 = padding; padding on the
left, ``T_total`` covers the cached prefix and the new tokens); ``past_key_values``: a :class:`LayerStates`, where
each layer keeps its own entry under ``self.layer_idx``.
"""

from .attention import Attention
from .cache import LayerStates
from .common import Gate, RMSNorm, ShortConvolution, left_aligned
from .memory import MemoryMixer, NeuralMemory
from .rope import apply_rope
from .self_modifying import SelfModifyingTitans
from .tnt import TNTMemory

__all__ = ["Attention", "Gate", "LayerStates", "MemoryMixer", "NeuralMemory", "RMSNorm", "SelfModifyingTitans",
           "ShortConvolution", "TNTMemory", "apply_rope", "left_aligned"]
