"""The sequence-model zoo as channel-independent time-series backbones (PatchTST's channel independence, Nie et
al., ICLR 2023, §3.1): any preset's stack of blocks (:func:`nestedmemory.models.preset_config`,
:class:`~nestedmemory.models.NestedMemoryModel`: blocks + final RMSNorm) runs over each variate's time tokens on
its own, ``[B, V, N, D] → [B·V, N, D]``, with weights shared by the variates. Nothing crosses variates, and every
preset's model is causal, so the backbone is causal in N.

Sizes: the preset at its ``tiny`` size (heads, memory chunk 8, SWA window 4, MAC segment 8, TNT's chunks) with the
caller's width and depth: time series give 10-100 tokens, the scale the tiny size was set for. A memory whose rule
names no chunk (Hope's self-modifying Titans) gets the tiny chunk too; ``chunk_size`` sets every memory's chunk.
The Continuum Memory System of ``hope`` / ``hope-attention`` is left out (``cms=None``: their blocks keep the plain
SwiGLU): its levels learn in context from a next-token loss over token ids, which a time series does not have.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import SIZES, NestedMemoryModel, preset_config
from ..models.config import NestedMemoryConfig
from ..train.config import InvalidSetting, check_names

#: the config fields ``ChannelIndependent`` sets itself (the width, the depth, the unused token embedding, the CMS)
#: and those of token ids, which it has none of.
FIXED = frozenset({"hidden_size", "num_layers", "vocab_size", "cms", "tie_word_embeddings", "pad_token_id",
                   "bos_token_id", "eos_token_id"})
#: what ``**overrides`` may set: :class:`NestedMemoryConfig` fields, and ``chunk_size``.
OVERRIDES = sorted((set(NestedMemoryConfig.__annotations__) - FIXED) | {"chunk_size"})


class ChannelIndependent(nn.Module):
    """``forward(tokens [B, V, N, D]) → [B, V, N, D]``: preset ``preset``'s blocks over each variate's tokens.
    ``overrides``: :class:`NestedMemoryConfig` fields (``num_heads``, ``memory``, ``window``, …) and ``chunk_size``
    (the memory chunk). ``num_variates`` is unused: the same weights serve every variate."""

    def __init__(self, dim: int, num_variates: int, layers: int, preset: str = "titans-lmm",
                 chunk_size: int | None = None, **overrides):
        super().__init__()
        check_names(f"model {preset}", "option", overrides, OVERRIDES)
        fields = dict(overrides, hidden_size=dim, num_layers=layers, vocab_size=1, cms=None)
        try:
            config = preset_config(preset, "tiny", **fields)
            if config.uses_memory and (chunk_size is not None or "chunk_size" not in (config.memory or {})):
                config = preset_config(preset, "tiny", **dict(fields, memory=dict(
                    config.memory or {}, chunk_size=chunk_size or SIZES["tiny"]["chunk"])))
        except ValueError as error:
            raise InvalidSetting(f"--model {preset}: {error}") from None
        if chunk_size is not None and not config.uses_memory:
            raise InvalidSetting(f"--model {preset}: chunk_size={chunk_size} is for memories; {preset} has none")
        self.model = NestedMemoryModel(config)
        self.model.embeddings.weight.requires_grad_(False)  # tokens come as inputs_embeds: no gradient, no DDP hook

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, v, n, d = tokens.shape
        hidden = self.model(inputs_embeds=tokens.reshape(b * v, n, d), return_dict=True).last_hidden_state
        return hidden.reshape(b, v, n, d)
