"""The global branch of a GSM layer (Behrouz et al., ICML 2025, arXiv 2411.15671, §3): tokenise the graph, run a
sequence mixer (:mod:`nestedmemory.graphs.mixers`) over the tokens, and give one vector back to every node.

* an *order* makes one sequence per graph: nodes sorted by (graph, key), right-padded to a dense batch
  (``to_dense_batch``), mixed, and scattered back through the inverse permutation (the idiom of Graph-Mamba's
  ``gps_layer.py``; NEXT-WAVE.md §4.2): ``hac_dfs`` (GSM++'s HAC-DFS rank, ``data.hac_rank``), ``degree``, ``random``,
  ``none`` (the nodes' own order);
* *token sets* make one sequence per node (GSM §3.1: k-hop, HAC-BFS): the mean-pooled token embeddings of
  :class:`~nestedmemory.graphs.TokenSets`, run as a batch of short sequences; the node reads the last position (its
  finest token);
* the *mixture of tokenisations* (GSM++ §5, MoT): a router ``σ(X W_r)`` picks the top 2 tokenisations per node and
  their encodings are concatenated, then projected.

Importing this module needs ``torch_geometric``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import to_dense_batch

from .mixers import SequenceMixer, as_sequence_mixer, make_mixer

__all__ = ["ORDERS", "TOKEN_SETS", "TOKENIZATIONS", "lexsort", "node_order", "SequenceBranch", "TokenBranch",
           "MixtureBranch", "global_branch"]

#: tokenisations into one sequence per graph.
ORDERS = ("hac_dfs", "degree", "random", "none")
#: tokenisations into one sequence per node.
TOKEN_SETS = ("khop", "hac_bfs")
TOKENIZATIONS = ORDERS + TOKEN_SETS
#: tokenisations each node's router picks (GSM++'s MoT: top 2).
TOP_K = 2
#: Knuth's multiplicative hash constant: the ``random`` order in evaluation sorts each graph's node indices by
#: ``index · KNUTH mod 2³²``, a fixed scrambled order (training draws a fresh order at every call).
KNUTH = 2654435761


def lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """The permutation sorting by ``keys``, the last the primary (as ``numpy.lexsort``); full ties keep index order."""
    perm = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in keys:
        perm = perm[torch.argsort(key[perm], stable=True)]
    return perm


def node_order(order: str, batch: torch.Tensor, edge_index: torch.Tensor, hac_rank: torch.Tensor | None,
               training: bool) -> torch.Tensor:
    """The permutation putting each graph's nodes in ``order``, graph after graph (``batch`` sorted, as PyG's):

    * ``hac_dfs``: by ``hac_rank`` (required; :class:`~nestedmemory.graphs.transforms.AddHACOrder`);
    * ``degree``: ascending number of edges into the node (its degree when ``edge_index`` lists both directions, as
      PyG's undirected graphs do), as Graph-Mamba; ties by ``hac_rank`` if given (label-invariant), else node index;
    * ``random``: a fresh uniform order at every call in training (Graph-Mamba's augmentation); in evaluation a
      fixed scramble of each graph's node indices (:data:`KNUTH`), so that a batch gives each graph the order it
      gets alone;
    * ``none``: the nodes' own order.
    """
    n = batch.numel()
    if order == "hac_dfs":
        if hac_rank is None:
            raise ValueError("order 'hac_dfs' needs hac_rank (data.hac_rank from AddHACOrder)")
        return lexsort(hac_rank, batch)
    if order == "degree":
        degree = torch.bincount(edge_index[1], minlength=n)
        return lexsort(degree, batch) if hac_rank is None else lexsort(hac_rank, degree, batch)
    if order == "random":
        if training:
            return lexsort(torch.rand(n, device=batch.device), batch)
        count = torch.bincount(batch)
        index = torch.arange(n, device=batch.device) - (count.cumsum(0) - count)[batch]  # within the graph
        return lexsort(index * KNUTH % 2 ** 32, batch)
    return lexsort(batch)


class SequenceBranch(nn.Module):
    """One sequence per graph in ``order`` (:func:`node_order`), mixed by ``mixer`` and returned in node order."""

    def __init__(self, mixer: SequenceMixer, order: str):
        super().__init__()
        self.mixer, self.order = mixer, order

    def forward(self, x, edge_index, batch, hac_rank=None, tokens=None):
        perm = node_order(self.order, batch, edge_index, hac_rank, self.training)
        dense, mask = to_dense_batch(x[perm], batch[perm])
        out = torch.empty_like(x)
        out[perm] = self.mixer(dense, mask)[mask]
        return out


class TokenBranch(nn.Module):
    """One sequence per node: ``tokens[tokenization].pool(x)`` ``[N, S, C]`` (coarse to fine, the node's own token
    last), mixed by ``mixer``; each node reads the last position."""

    def __init__(self, mixer: SequenceMixer, tokenization: str):
        super().__init__()
        self.mixer, self.tokenization = mixer, tokenization

    def forward(self, x, edge_index, batch, hac_rank=None, tokens=None):
        if tokens is None or self.tokenization not in tokens:
            raise ValueError(f"tokenisation {self.tokenization!r} needs tokens={{{self.tokenization!r}: TokenSets}}")
        seq = tokens[self.tokenization].pool(x)
        mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=x.device)
        return self.mixer(seq, mask)[:, -1]


class MixtureBranch(nn.Module):
    """GSM++'s mixture of tokenisations (§5, MoT): every tokenisation's branch encodes every node, the router
    ``s = σ(x W_r)`` keeps each node's top :data:`TOP_K` (2) of them, and ``W_o [s_t e_t]_t`` projects their
    concatenation: each tokenisation has its own slot, zero where not picked, and a picked encoding is scaled by its
    score (the router's gradient, as in mixtures of experts)."""

    def __init__(self, branches: dict[str, nn.Module], channels: int):
        super().__init__()
        if len(branches) < TOP_K:
            raise ValueError(f"a mixture needs at least {TOP_K} tokenisations, got {list(branches)}")
        self.branches = nn.ModuleDict(branches)
        self.router = nn.Linear(channels, len(branches))
        self.proj = nn.Linear(len(branches) * channels, channels)

    def forward(self, x, edge_index, batch, hac_rank=None, tokens=None):
        enc = torch.stack([b(x, edge_index, batch, hac_rank, tokens) for b in self.branches.values()], 1)
        score = torch.sigmoid(self.router(x))
        top = score.topk(TOP_K, dim=1).indices
        gate = torch.zeros_like(score).scatter(1, top, score.gather(1, top))
        return self.proj((enc * gate.unsqueeze(-1)).flatten(1))


def global_branch(mixer, order: str, channels: int, heads: int = 1, dropout: float = 0.0) -> nn.Module:
    """The global branch for ``order``: a tokenisation of :data:`TOKENIZATIONS` with ``mixer`` (a module, or a
    :func:`~nestedmemory.graphs.mixers.make_mixer` spec: a name or a factory ``channels → module``), or
    ``"mixture"`` with ``mixer`` a dict ``{tokenisation: mixer}``."""
    if order == "mixture":
        if not isinstance(mixer, dict):
            raise ValueError(f"order 'mixture' needs mixer={{tokenisation: mixer}}, got {type(mixer).__name__}")
        return MixtureBranch({name: global_branch(m, name, channels, heads, dropout) for name, m in mixer.items()},
                             channels)
    if order not in TOKENIZATIONS:
        raise ValueError(f"unknown order {order!r}: choose one of {', '.join(TOKENIZATIONS)}, mixture")
    mixer = as_sequence_mixer(mixer) if isinstance(mixer, nn.Module) else make_mixer(mixer, channels, heads, dropout)
    return SequenceBranch(mixer, order) if order in ORDERS else TokenBranch(mixer, order)
