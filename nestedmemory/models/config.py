"""``NestedMemoryConfig``: one ``transformers`` config for every model of the family (SPEC §2.3, §3.4, §10.3).

A model is a stack of Llama-style blocks (RMSNorm, token mixer, residual; RMSNorm, SwiGLU MLP, residual) whose
token mixers are chosen by ``architecture``; the memory layers run the rule in ``memory``. Every field is checked at
construction; a bad value raises a ``ValueError`` that names the field.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
from transformers import PretrainedConfig

from ..layers import MemoryMixer, SelfModifyingTitans, TNTMemory
from ..memory import MemoryRule
from .cms import check_options

#: ``lmm`` Titans' memory as the mixer; ``mac`` / ``mag`` / ``mal`` Titans' memory as a context / gate / layer;
#: ``hybrid`` Samba-style alternation of memory blocks and sliding-window-attention blocks (Miras' -H models);
#: ``transformer`` Transformer++ (attention with RoPE); ``hope`` self-modifying Titans as the mixer (NL §8.1, with
#: ``cms`` the Hope block of NL §8.3); ``tnt`` TNT's hierarchical memory as the mixer (TNT §3, Eq. 5-7).
ARCHITECTURES = ("lmm", "mac", "mag", "mal", "hybrid", "transformer", "hope", "tnt")
#: architectures whose attention is sliding-window, so ``window`` is required.
SWA_ARCHITECTURES = ("mag", "mal", "hybrid")
#: the memory rule when ``memory`` does not name one: Titans' LMM (depth-2 MLP, expansion 4, ℓ2, forget gate,
#: momentum; Titans §3.1, Eq. 13-14).
TITANS_RULE = dict(memory="mlp", depth=2, expansion=4, objective="l2", retention="decay", learner="momentum")
RULE_KEYS = frozenset(f.name for f in dataclasses.fields(MemoryRule))
LAYER_KEYS = frozenset(inspect.signature(MemoryMixer).parameters) - {"dim", "num_heads", "head_dim", "rule",
                                                                       "layer_idx"}
#: the extra layer options of ``architecture="tnt"`` (the local memories).
TNT_KEYS = frozenset({"local_chunk_sizes", "shard_sizes", "qk_projection"})
#: the ``memory`` keys of ``architecture="hope"``: :class:`SelfModifyingTitans` keywords.
SELF_MODIFYING_KEYS = frozenset(inspect.signature(SelfModifyingTitans).parameters) - {
    "dim", "num_heads", "head_dim", "layer_idx", "mode"}
#: MAC's long-term memory queries: ``segment`` the segment's own tokens (Titans Eq. 21), ``learned``
#: ``longterm_tokens`` learned query tokens (titans-pytorch's slots; earlier versions).
MAC_QUERIES = ("segment", "learned")
#: the values that a config saved before these fields existed loads with: the behaviour of the code that saved it.
EARLIER_DEFAULTS = {"mac_queries": "learned", "memory_persistent": False}


def layer_keys(architecture: str) -> frozenset[str]:
    """The memory-layer options (not MemoryRule fields) that ``memory`` may set for ``architecture``."""
    return LAYER_KEYS | (TNT_KEYS if architecture == "tnt" else frozenset())


def memory_keys(architecture: str) -> frozenset[str]:
    """Every key ``memory`` may hold for ``architecture``: self-modifying Titans' keywords for ``hope``, else the
    MemoryRule fields and the layer options."""
    return SELF_MODIFYING_KEYS if architecture == "hope" else RULE_KEYS | layer_keys(architecture)


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"NestedMemoryConfig.{name} must be an integer >= {minimum}, got {value!r}")


class NestedMemoryConfig(PretrainedConfig):
    """Configuration of a :class:`~nestedmemory.models.NestedMemoryForCausalLM`.

    Backbone: ``vocab_size``, ``hidden_size``, ``num_layers``, ``num_heads``, ``head_dim`` (default
    ``hidden_size / num_heads``, which must then divide), ``intermediate_size`` of the SwiGLU MLP (default
    ``8/3 · hidden_size`` rounded up to a multiple of 32, Llama), ``rms_norm_eps``, ``tie_word_embeddings``.

    ``memory``: the memory layers' rule and layer options in one dict — :class:`~nestedmemory.memory.MemoryRule`
    fields (``memory``, ``depth``, ``objective``, ``retention``, ``learner``, ``chunk_size``, …) and
    :class:`~nestedmemory.layers.MemoryMixer` keywords (``channel_gates``, ``lr_init``, ``decay_init``, …);
    ``None`` is Titans' rule. ``memory_heads`` / ``memory_head_dim``: the memory's heads (default ``num_heads`` /
    ``head_dim``; the polynomial-feature presets use narrower memory heads).

    Attention: ``num_kv_heads`` (GQA), ``window`` (sliding window; required by ``mag``, ``mal``, ``hybrid``;
    ``None`` is global attention for ``transformer``), ``persistent_tokens`` (Titans §3.3), ``rope_theta``.
    MAC: ``segment_size`` (tokens per segment), ``mac_queries`` (the queries of the long-term memory read
    ``h = M*(q)``: ``"segment"`` the segment's own tokens, Titans Eq. 21; ``"learned"`` ``longterm_tokens`` learned
    query tokens per segment, the form of earlier versions). MAG / MAL: ``memory_persistent`` (the memory reads
    ``x̃ = [p] ∥ x``, its own ``persistent_tokens`` hidden-space tokens before the input, Titans Eq. 26-30; ``False``:
    ``x`` alone, the form of earlier versions). A config saved without ``mac_queries`` / ``memory_persistent`` (before
    they existed) loads with the earlier forms (:meth:`from_dict`); a new config has the paper's.

    ``cms``: ``None``, or the Continuum Memory System (NL §7.1, :mod:`nestedmemory.models.cms`) that replaces
    every block's SwiGLU MLP, as a dict: ``periods`` (update period ``C^{(ℓ)}`` of each level, in chain order; all
    multiples of the smallest, which is the segment of the in-context loop), ``variant`` (``sequential``,
    ``independent``, ``nested``), ``lr_init`` / ``lr_max`` (the learnable steps ``η^{(ℓ)} = lr_max · σ(s)``, at
    ``lr_init`` initially; 0 freezes), ``first_order``; missing keys take their defaults. Each level is a SwiGLU of
    width ``intermediate_size``. Works with every ``architecture``.
    """

    model_type = "nestedmemory"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                     "num_key_value_heads": "num_kv_heads"}

    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int | None = None
    intermediate_size: int | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    architecture: str = "lmm"
    memory: dict | None = None
    memory_heads: int | None = None
    memory_head_dim: int | None = None
    num_kv_heads: int | None = None
    window: int | None = None
    persistent_tokens: int = 0
    rope_theta: float = 10000.0
    segment_size: int = 64
    longterm_tokens: int = 4
    mac_queries: str = "segment"
    memory_persistent: bool = True
    cms: dict | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"NestedMemoryConfig.architecture={self.architecture!r} is not supported; choose one of "
                             f"{list(ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "segment_size"):
            _positive_int(name, getattr(self, name))
        for name in ("persistent_tokens", "longterm_tokens"):
            _positive_int(name, getattr(self, name), minimum=0)
        if self.mac_queries not in MAC_QUERIES:
            raise ValueError(f"NestedMemoryConfig.mac_queries must be one of {list(MAC_QUERIES)}, got "
                             f"{self.mac_queries!r}")
        if not isinstance(self.memory_persistent, bool):
            raise ValueError(f"NestedMemoryConfig.memory_persistent must be True or False, got "
                             f"{self.memory_persistent!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"NestedMemoryConfig.head_dim: hidden_size={self.hidden_size} is not divisible by "
                                 f"num_heads={self.num_heads}; set head_dim explicitly")
            self.head_dim = self.hidden_size // self.num_heads
        _positive_int("head_dim", self.head_dim)
        if self.intermediate_size is None:
            self.intermediate_size = 32 * math.ceil(8 * self.hidden_size / 3 / 32)
        _positive_int("intermediate_size", self.intermediate_size)
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        _positive_int("num_kv_heads", self.num_kv_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"NestedMemoryConfig.num_kv_heads={self.num_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        if self.uses_attention and self.head_dim % 2:
            raise ValueError(f"NestedMemoryConfig.head_dim must be even for attention (RoPE), got {self.head_dim}")
        if self.window is not None:
            _positive_int("window", self.window)
        elif self.architecture in SWA_ARCHITECTURES:
            raise ValueError(f"NestedMemoryConfig.window (the sliding-window size) must be an integer >= 1 for "
                             f"architecture={self.architecture!r}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"NestedMemoryConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cms is not None:
            try:
                self.cms = check_options(self.cms)
            except ValueError as error:
                raise ValueError(f"NestedMemoryConfig.cms: {error}") from error
        if self.uses_memory:
            self.memory_heads = self.num_heads if self.memory_heads is None else self.memory_heads
            self.memory_head_dim = self.head_dim if self.memory_head_dim is None else self.memory_head_dim
            _positive_int("memory_heads", self.memory_heads)
            _positive_int("memory_head_dim", self.memory_head_dim)
            layer = self.memory_layer_kwargs()
            try:  # the layer checks its own options (gate initialisations, activation, …)
                with torch.device("meta"):
                    self.memory_class(self.hidden_size, self.memory_heads, self.memory_head_dim, **layer)
            except (TypeError, ValueError) as error:
                raise ValueError(f"NestedMemoryConfig.memory: {error}") from error
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """The config of a saved ``config_dict``; the fields it lacks because it was saved before they existed take
        :data:`EARLIER_DEFAULTS`, so an earlier checkpoint builds the model it was trained as."""
        return super().from_dict({**EARLIER_DEFAULTS, **config_dict}, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Write ``config.json`` and, beside it, the model's code with an ``auto_map`` (:func:`.hub.save_code`), so
        the folder loads with ``trust_remote_code=True`` without this package. A class loaded as remote code
        (``_auto_class`` set) is saved by ``transformers``, which copies its own files."""
        if self._auto_class is None:
            from .hub import save_code

            save_code(self, save_directory)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def uses_memory(self) -> bool:
        return self.architecture != "transformer"

    @property
    def uses_attention(self) -> bool:
        return self.architecture not in ("lmm", "hope", "tnt")

    @property
    def memory_class(self) -> type:
        return {"hope": SelfModifyingTitans, "tnt": TNTMemory}.get(self.architecture, MemoryMixer)

    def memory_layer_kwargs(self) -> dict:
        """Keyword arguments of the memory layers' :class:`MemoryMixer` (``rule`` included) or, for ``hope``,
        :class:`SelfModifyingTitans`, checked."""
        memory = (TITANS_RULE if self.architecture != "hope" else {}) if self.memory is None else self.memory
        if not isinstance(memory, dict):
            raise ValueError(f"NestedMemoryConfig.memory must be a dict or None, got {type(memory).__name__}")
        unknown = set(memory) - memory_keys(self.architecture)
        if self.architecture == "hope":
            if unknown:
                raise ValueError(f"NestedMemoryConfig.memory has unknown keys {sorted(unknown)}; self-modifying "
                                 f"Titans takes {sorted(SELF_MODIFYING_KEYS)}")
            return dict(memory)
        options = layer_keys(self.architecture)
        if unknown:
            raise ValueError(f"NestedMemoryConfig.memory has unknown keys {sorted(unknown)}; MemoryRule fields are "
                             f"{sorted(RULE_KEYS)}, layer options {sorted(options)}")
        try:
            rule = MemoryRule(**{k: v for k, v in memory.items() if k in RULE_KEYS})
        except (TypeError, ValueError) as error:
            raise ValueError(f"NestedMemoryConfig.memory: {error}") from error
        return dict({k: v for k, v in memory.items() if k in options}, rule=rule)
