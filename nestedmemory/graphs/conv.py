"""``GSMConv``: a graph sequence model layer (GSM++, Behrouz et al., ICML 2025, arXiv 2411.15671, §3 and §5) with
the layout and calling convention of PyG's ``GPSConv`` (Rampášek et al., NeurIPS 2022): a local message-passing
branch and a global sequence branch on the same input, each with dropout, a residual and a norm, summed, then a
residual MLP and a norm. The global branch tokenises the graph and runs any sequence mixer
(:mod:`nestedmemory.graphs.branches`, :mod:`nestedmemory.graphs.mixers`). Importing this module needs
``torch_geometric``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import ResGatedGraphConv
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from .branches import global_branch

__all__ = ["GSMConv"]


class GSMConv(nn.Module):
    """``forward(x [N, C], edge_index, batch=None, *, hac_rank=None, tokens=None, **kwargs) → [N, C]``::

        h_local  = norm1(x + dropout(conv(x, edge_index, **kwargs)))
        h_global = norm2(x + dropout(branch(x)))          # tokenise → mixer → back to nodes
        out      = norm3(h + mlp(h)),  h = h_local + h_global

    as ``GPSConv`` (whose attention is the global branch with ``mixer="attention"`` in any order).

    Args:
        channels: width ``C``.
        conv: the local MPNN, called as ``conv(x, edge_index, **kwargs)``: ``"gatedgcn"`` (PyG's
            ``ResGatedGraphConv``, the residual gated graph convnet of Bresson & Laurent that GPS and GSM++ use), a
            module (e.g. any ``MessagePassing``), or ``None`` (global branch only).
        mixer: the global sequence mixer: a module (a :class:`~nestedmemory.graphs.mixers.SequenceMixer`, or a causal
            module such as one of this library's layers), or a :func:`~nestedmemory.graphs.mixers.make_mixer` spec:
            ``"attention"``, ``"hybrid"`` (GSM++'s SSM + attention block), a preset name, a factory
            ``channels → module``. For ``order="mixture"``: a dict ``{tokenisation: mixer}``.
        order: the tokenisation (:mod:`~nestedmemory.graphs.branches`): ``"hac_dfs"`` (needs ``hac_rank``),
            ``"degree"``, ``"random"``, ``"none"`` (one sequence per graph); ``"khop"``, ``"hac_bfs"`` (one per node;
            need ``tokens``); ``"mixture"``.
        heads: attention heads of a named mixer.
        dropout: on both branches' outputs and inside the MLP (and in a named mixer's attention).
        act, norm, norm_kwargs: the MLP's activation and the norms, resolved by PyG as in ``GPSConv`` (default batch
            norm; ``None`` for none).

    ``forward``'s ``batch`` assigns nodes to graphs (``None``: one graph); ``hac_rank`` is each node's position in
    its graph's HAC-DFS order (``data.hac_rank``; also the label-invariant tie-break of ``"degree"``); ``tokens``
    maps ``"khop"`` / ``"hac_bfs"`` to the batch's :class:`~nestedmemory.graphs.TokenSets`
    (:func:`~nestedmemory.graphs.models.batch_tokens`). Other ``kwargs`` go to ``conv``.
    """

    def __init__(self, channels: int, conv: nn.Module | str | None = "gatedgcn", mixer="hybrid",
                 order: str = "hac_dfs", *, heads: int = 1, dropout: float = 0.0, act: str = "relu",
                 norm: str | None = "batch_norm", norm_kwargs: dict | None = None):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"GSMConv channels must be a positive integer, got {channels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GSMConv dropout must lie in [0, 1), got {dropout}")
        if isinstance(conv, str):
            if conv != "gatedgcn":
                raise ValueError(f"GSMConv conv must be 'gatedgcn', a module or None, got {conv!r}")
            conv = ResGatedGraphConv(channels, channels)
        self.channels, self.conv, self.dropout, self.order = channels, conv, dropout, order
        self.branch = global_branch(mixer, order, channels, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), activation_resolver(act), nn.Dropout(dropout),
                                 nn.Linear(2 * channels, channels), nn.Dropout(dropout))
        self.norm1, self.norm2, self.norm3 = (normalization_resolver(norm, channels, **(norm_kwargs or {}))
                                              for _ in range(3))
        self.norm_with_batch = self.norm1 is not None and "batch" in inspect.signature(self.norm1.forward).parameters

    def _norm(self, norm, h, batch):
        if norm is None:
            return h
        return norm(h, batch=batch) if self.norm_with_batch else norm(h)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None, *,
                hac_rank: torch.Tensor | None = None, tokens: dict | None = None, **kwargs) -> torch.Tensor:
        nodes = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if batch is None else batch
        hs = []
        if self.conv is not None:
            h = F.dropout(self.conv(x, edge_index, **kwargs), p=self.dropout, training=self.training)
            hs.append(self._norm(self.norm1, h + x, batch))
        h = self.branch(x, edge_index, nodes, hac_rank, tokens)
        h = F.dropout(h, p=self.dropout, training=self.training)
        hs.append(self._norm(self.norm2, h + x, batch))
        out = sum(hs)
        return self._norm(self.norm3, out + self.mlp(out), batch)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, conv={self.conv}, order={self.order!r})"
