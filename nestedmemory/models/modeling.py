"""``transformers`` models: ``NestedMemoryModel`` (the block stack) and ``NestedMemoryForCausalLM`` (+ LM head, loss,
``generate``), registered with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM``.

The decoding cache is a :class:`~nestedmemory.layers.LayerStates`: one entry per token mixer — the memory state
(weights, momentum, chunk position; O(1) in the length, except the ``exp`` kernel memories which grow like
attention), the short-conv windows, the last ``window − 1`` keys/values of sliding-window attention, MAC's
current segment. ``generate`` never builds a ``DynamicCache`` for this model (``_supports_default_dynamic_cache``
is ``False``, as for RWKV): the first forward creates the ``LayerStates``, which ``generate`` then feeds back with
only the new token. The cache argument is ``cache`` (the name ``transformers`` passes since 5.20) or
``past_key_values`` (before), and outputs carry it under :data:`CACHE_FIELD`, so generation is right under every
version the project supports. A left-padded batch decoded with a cache runs row by row (exact: each row's memory
chunks, MAC segments and CMS periods start at its own first token); equal-length batches run batched.
"""

from __future__ import annotations

import torch.nn.functional as F
import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..layers import LayerStates, RMSNorm
from ..layers.memory import EARLIER_EXP_SCALE
from .blocks import Block
from .cms import continuum_forward
from .config import NestedMemoryConfig

#: the name of the decoding state in ``transformers``' model outputs: ``cache`` in the versions that renamed it
#: (``past_key_values`` there is a deprecated alias that warns), ``past_key_values`` before.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_of(output) -> LayerStates | None:
    """The decoding cache of a model ``output``, under either ``transformers`` spelling, without a warning."""
    return getattr(output, CACHE_FIELD)


def one_cache(cache: LayerStates | None, past_key_values: LayerStates | None) -> LayerStates | None:
    """The cache passed as ``cache`` or as its former name ``past_key_values`` (both: an error)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the decoding cache once, as cache (or its former name past_key_values)")
    return past_key_values if cache is None else cache


class NestedMemoryPreTrainedModel(PreTrainedModel):
    config_class = NestedMemoryConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _is_stateful = True  # generate: no assisted decoding (a recurrent state cannot be rolled back)
    #: checkpoints written before attention built persistent tokens only when used hold empty ones (dropped on load)
    _keys_to_ignore_on_load_unexpected = [r"\.persistent_[kv]$"]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    @classmethod
    def from_pretrained(cls, *args, output_loading_info: bool = False, **kwargs):
        """``PreTrainedModel.from_pretrained``; a checkpoint written before the ``exp`` kernel had its scale loads
        with ``s = 1`` (:data:`~nestedmemory.layers.memory.EARLIER_EXP_SCALE`), the kernel it was trained with
        (``transformers`` initialises missing weights itself; the layer's state-dict hook only runs in
        ``load_state_dict``)."""
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = {name for name in info["missing_keys"] if name.rsplit(".", 1)[-1] == "exp_scale"}
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in missing:
                    parameter.fill_(EARLIER_EXP_SCALE)
        return (model, info) if output_loading_info else model

    def _init_weights(self, module):
        """Llama / GPT-2-style initialisation: embeddings and every linear layer ``N(0, σ)`` with
        ``σ = initializer_range`` (0.02), biases zero; the output projections that write into the residual stream
        (:func:`~nestedmemory.layers.common.residual_output`) ``N(0, σ / sqrt(2 · num_layers))`` (GPT-2). Gates,
        thresholds (:func:`~nestedmemory.layers.common.keep_init`), short convolutions, norms, persistent tokens and
        the memories' initial states keep what their constructors give them: those inits are deliberate (a gate
        starts at its stated value for every token, a memory neither explodes nor vanishes at step 0)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.Linear) and not getattr(module, "keep_init", False):
            scale = (2 * self.config.num_layers) ** -0.5 if getattr(module, "residual_output", False) else 1.0
            nn.init.normal_(module.weight, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class NestedMemoryModel(NestedMemoryPreTrainedModel):
    """Token embedding, ``num_layers`` blocks (:mod:`nestedmemory.models.blocks`), final RMSNorm."""

    def __init__(self, config: NestedMemoryConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def forward(self, input_ids=None, attention_mask=None, cache: LayerStates | None = None,
                use_cache: bool | None = None, inputs_embeds=None, return_dict: bool | None = None, head=None,
                past_key_values: LayerStates | None = None, **kwargs):
        """``attention_mask`` ``[B, T_total]`` (1 = token, 0 = left padding; covers the cached prefix and the new
        tokens). ``use_cache`` (default ``False``) returns the ``LayerStates`` to continue from, with
        ``seen_tokens`` advanced by ``T``; a ``cache`` (or ``past_key_values``) given without ``use_cache`` is
        read, not changed. With ``config.cms``, ``head`` (hidden states → logits) gives the task loss that the CMS
        levels descend in context, and ``input_ids`` its targets
        (:func:`~nestedmemory.models.cms.continuum_forward`)."""
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if use_cache and cache is None:
            cache = LayerStates()
        if cache is not None and self._by_row(attention_mask, cache):
            hidden_states = self._row_by_row(input_ids, inputs_embeds, attention_mask, cache,
                                             bool(use_cache), head)
        elif self.config.cms is None:
            hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
            for layer in self.layers:
                hidden_states, _ = layer(hidden_states, attention_mask, cache, bool(use_cache))
            hidden_states = self.norm(hidden_states)
        elif input_ids is None or head is None:
            raise ValueError("a model with a CMS (config.cms) needs input_ids and the LM head: its levels learn in "
                             "context from the next-token loss; use NestedMemoryForCausalLM")
        else:
            hidden_states = continuum_forward(self, head, input_ids, attention_mask, cache,
                                              bool(use_cache))
        if use_cache:
            cache.seen_tokens += hidden_states.shape[1]
        out = BaseModelOutputWithPast(last_hidden_state=hidden_states,
                                      **{CACHE_FIELD: cache if use_cache else None})
        return out if (self.config.return_dict if return_dict is None else return_dict) else out.to_tuple()

    def _by_row(self, attention_mask, cache: LayerStates) -> bool:
        """Whether this call runs row by row: the cache already does, or it is new and the batch is left-padded
        in a model with a memory or a CMS (attention alone masks padding in one batched pass)."""
        if cache.rows is not None:
            return True
        fresh = len(cache) == 0 and cache.continuum is None and cache.seen_tokens == 0
        return fresh and attention_mask is not None and (self.config.uses_memory or self.config.cms is not None)

    def _row_by_row(self, input_ids, inputs_embeds, attention_mask, cache: LayerStates, use_cache: bool, head):
        """The hidden states ``[B, T, D]`` of a left-padded batch with a decoding cache: every row runs alone on
        its real tokens with its own states (``cache.rows``), so each equals the row decoded by itself; padding
        positions get zeros. Exact and row-sequential: batching rows whose chunk grids differ is not done yet."""
        x = input_ids if inputs_embeds is None else inputs_embeds
        b, t = x.shape[:2]
        real = (torch.ones(b, t, dtype=torch.bool, device=x.device) if attention_mask is None
                else attention_mask[:, -t:].bool())
        rows = cache.rows if cache.rows is not None else [LayerStates() for _ in range(b)]
        if not use_cache:  # read, not changed
            rows = [row.copy() for row in rows]
        hidden = None
        for i, row in enumerate(rows):
            if not bool(real[i].any()):
                continue
            piece = x[i:i + 1, real[i]]
            pieces = dict(input_ids=piece) if inputs_embeds is None else dict(inputs_embeds=piece)
            out = self(**pieces, cache=row, use_cache=True, return_dict=True, head=head).last_hidden_state
            hidden = out.new_zeros(b, t, out.shape[-1]) if hidden is None else hidden
            hidden[i, real[i]] = out[0]
        if use_cache:
            cache.rows = rows
        return hidden if hidden is not None else x.new_zeros(b, t, self.config.hidden_size, dtype=self.dtype)


class NestedMemoryForCausalLM(NestedMemoryPreTrainedModel, GenerationMixin):
    """:class:`NestedMemoryModel` + LM head. ``labels`` gives the mean next-token cross-entropy (labels shifted
    inside, ``-100`` ignored)."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: NestedMemoryConfig):
        super().__init__(config)
        self.model = NestedMemoryModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, cache: LayerStates | None = None,
                use_cache: bool | None = None, inputs_embeds=None, labels=None, return_dict: bool | None = None,
                logits_to_keep: int = 0, past_key_values: LayerStates | None = None, **kwargs):
        """As :meth:`NestedMemoryModel.forward`; ``logits_to_keep > 0`` computes logits for the last positions
        only (``generate`` asks for 1)."""
        if labels is not None and logits_to_keep:
            raise ValueError("labels need the logits of every position; leave logits_to_keep at 0")
        out = self.model(input_ids, attention_mask, one_cache(cache, past_key_values), use_cache, inputs_embeds,
                         return_dict=True, head=self.lm_head)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache_of(out)})
        return result if (self.config.return_dict if return_dict is None else return_dict) else result.to_tuple()
