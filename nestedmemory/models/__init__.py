"""Whole models (SPEC §3.4, §10.3): ``transformers``-compatible configs and causal LMs, blocks (Llama-style, Titans
MAC / MAG / MAL, Samba-style hybrids) and presets by name and size. Importing this package registers the
``nestedmemory`` model type with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cms import stack_levels
from .config import NestedMemoryConfig
from .modeling import NestedMemoryForCausalLM, NestedMemoryModel, NestedMemoryPreTrainedModel
from .presets import PRESETS, SIZES, count_parameters, from_preset, preset_config

AutoConfig.register(NestedMemoryConfig.model_type, NestedMemoryConfig, exist_ok=True)
AutoModel.register(NestedMemoryConfig, NestedMemoryModel, exist_ok=True)
AutoModelForCausalLM.register(NestedMemoryConfig, NestedMemoryForCausalLM, exist_ok=True)

__all__ = ["NestedMemoryConfig", "NestedMemoryForCausalLM", "NestedMemoryModel", "NestedMemoryPreTrainedModel",
           "PRESETS", "SIZES", "count_parameters", "from_preset", "preset_config", "stack_levels"]
