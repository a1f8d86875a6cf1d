"""Graph → sequence tokenisations of the GSM framework (Behrouz et al., ICML 2025, arXiv 2411.15671, §3–4;
NEXT-WAVE.md §4.2): node orders (degree, random, HAC-DFS), per-node token sequences (k-hop, HAC-BFS) and the
hierarchical positional encoding from the HAC tree (:mod:`nestedmemory.graphs.hac`).

* An *order* is a permutation ``perm: LongTensor[num_nodes]`` (``perm[i]`` = the node at position ``i``; a node's
  rank is ``perm.argsort()``): one sequence per graph, the sequence models run on ``x[perm]``.
* Per-node token sequences are :class:`TokenSets`: each node gets a sequence of node sets, each set one token whose
  encoding is the mean of its members' features (:meth:`TokenSets.pool`; GSM++'s reading), or their sum
  (``reduce="sum"``: the token then also carries its size, e.g. a node's degree in its 1-hop token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .hac import HACTree
from .structure import bfs, check_graph, check_node_features, csr, undirected_edges, wl_colours

__all__ = [
    "TokenSets", "hac_dfs_order", "hac_bfs_tokens", "khop_tokens", "degree_order", "random_order",
    "hierarchical_pe", "cluster_distances", "POOLS",
]

#: how a token encodes its member nodes.
POOLS = ("mean", "sum")


@dataclass(frozen=True)
class TokenSets:
    """Sequences of node-set tokens.

    * ``seq``: ``LongTensor[num_nodes, seq_len]``, the token ids of each node's sequence;
    * ``members``: ``LongTensor[2, num_members]``, pairs ``(token, node)``: the nodes each token pools;
    * ``num_tokens``: the number of distinct token ids. A token without members pools to zeros;
    * ``reduce``: ``"mean"`` (default) or ``"sum"`` of the members.
    """

    seq: torch.Tensor
    members: torch.Tensor
    num_tokens: int
    reduce: str = "mean"

    def __post_init__(self):
        if self.reduce not in POOLS:
            raise ValueError(f"unknown token pooling {self.reduce!r}: choose one of {', '.join(POOLS)}")

    def matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The pooling matrix, sparse ``[num_tokens, num_nodes]``: ones on the members (``"sum"``), divided by the
        token's size (``"mean"``: rows summing to 1, or 0 if empty)."""
        token, _ = self.members
        value = torch.ones(token.shape, dtype=dtype or torch.get_default_dtype())
        if self.reduce == "mean":
            value = value / torch.bincount(token, minlength=self.num_tokens)[token]
        shape = (self.num_tokens, self.seq.shape[0])
        return torch.sparse_coo_tensor(self.members, value, shape, check_invariants=False).coalesce()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Token encodings ``[num_nodes, seq_len, features]``: each token the mean (or sum) of its members' rows of
        ``x``."""
        token, node = self.members
        sums = x.new_zeros(self.num_tokens, x.shape[-1]).index_add_(0, token, x[node])
        if self.reduce == "sum":
            return sums[self.seq]
        count = torch.bincount(token, minlength=self.num_tokens).clamp_min(1).to(x.dtype)
        return (sums / count[:, None])[self.seq]


def _smallest_key(tree: HACTree, level: int) -> np.ndarray:
    """Each level-``level`` cluster's smallest node key: the label-invariant tie-break between clusters."""
    key = np.full(tree.num_clusters[level], tree.num_nodes, dtype=np.int64)
    np.minimum.at(key, tree.levels[level].numpy(), tree.node_key.numpy())
    return key


def _sibling_ranks(tree: HACTree) -> list[np.ndarray]:
    """For each level ``l < depth``, each cluster's position among its siblings (the children of its parent):
    decreasing affinity of the edge it picked (``merge_rank``), ties (the mutual pair that sealed the merge) by
    smallest node key."""
    ranks = []
    for level, (parent, merge) in enumerate(zip(tree.parents, tree.merge_rank)):
        parent, merge = parent.numpy(), merge.numpy()
        order = np.lexsort((_smallest_key(tree, level), -merge, parent))
        group_start = np.searchsorted(parent[order], parent[order])
        rank = np.empty(parent.size, dtype=np.int64)
        rank[order] = np.arange(parent.size) - group_start
        ranks.append(rank)
    return ranks


def hac_dfs_order(tree: HACTree) -> torch.Tensor:
    """GSM++'s HAC-DFS order: the leaf order of a depth-first traversal of the HAC tree, top-level clusters (the
    connected components) by smallest node key, children in decreasing affinity of the edge they merged along
    (:func:`_sibling_ranks`). Every cluster of every level is a contiguous run of the order, which is what gives
    the node locality of the paper's Theorem 6."""
    ranks = _sibling_ranks(tree)
    keys = [rank[level.numpy()] for rank, level in zip(ranks, tree.levels)]
    keys.append(_smallest_key(tree, tree.depth)[tree.levels[-1].numpy()])
    return torch.from_numpy(np.lexsort(keys))


def hac_bfs_tokens(tree: HACTree) -> TokenSets:
    """GSM++'s HAC-BFS tokens: for each node, its ancestor clusters from the top level (its connected component) down
    to itself, ``seq_len = depth + 1``. Token ids number the tree's vertices level by level as in
    :meth:`HACTree.parent`, so level-``l`` cluster ``c`` is token ``sum(num_clusters[:l]) + c``."""
    offsets = np.cumsum([0] + tree.num_clusters)
    ids = [level + int(offsets[l]) for l, level in enumerate(tree.levels)]
    nodes = torch.arange(tree.num_nodes).repeat(len(ids))
    members = torch.stack([torch.cat(ids), nodes])
    return TokenSets(torch.stack(ids[::-1], dim=1), members, int(offsets[-1]))


def khop_tokens(edge_index, num_nodes: int, k: int, *, cumulative: bool = True) -> TokenSets:
    """k-hop tokens (GSM §3.1, as in NAGphormer's Hop2Token): for each node ``v`` the sequence of its hop-``i``
    neighbourhoods, ``i = 0..k``: the nodes within ``i`` hops (``cumulative=True``) or at exactly ``i`` hops.
    Token ``i`` of node ``v`` has id ``v * (k + 1) + i``. Exact breadth-first distances on the undirected graph."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    u, v, _ = undirected_edges(check_graph(edge_index, num_nodes), num_nodes)
    indptr, indices = csr(u, v, num_nodes)
    source, node, hops = bfs(indptr, indices, np.arange(num_nodes), max_hops=k)
    if cumulative:  # a node at distance d belongs to tokens d..k
        repeat = k + 1 - hops
        hops = np.repeat(hops, repeat) + np.arange(repeat.sum()) - np.repeat(np.cumsum(repeat) - repeat, repeat)
        source, node = np.repeat(source, repeat), np.repeat(node, repeat)
    members = torch.from_numpy(np.stack([source * (k + 1) + hops, node]))
    seq = torch.arange(num_nodes * (k + 1)).view(num_nodes, k + 1)
    return TokenSets(seq, members, num_nodes * (k + 1))


def degree_order(edge_index, num_nodes: int, *, x=None, descending: bool = False) -> torch.Tensor:
    """Nodes sorted by degree in the undirected simple graph (ascending by default, as Graph-Mamba's degree
    ordering), ties by 1-WL colour (label-invariant, from ``x`` and the graph), then by node id."""
    u, v, _ = undirected_edges(check_graph(edge_index, num_nodes), num_nodes)
    feats = None if x is None else check_node_features(x, num_nodes) + 0.0
    degree = np.bincount(np.concatenate([u, v]), minlength=num_nodes)
    colour = wl_colours(u, v, num_nodes, feats)
    return torch.from_numpy(np.lexsort((np.arange(num_nodes), colour, -degree if descending else degree)))


def random_order(num_nodes: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random order, a function of ``seed`` only (``torch.randperm`` on its own generator)."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive integer, got {num_nodes!r}")
    return torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed))


def _cluster_edges(tree: HACTree, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the level-``level`` cluster graph: two clusters adjacent when a graph edge crosses them."""
    cluster = tree.levels[level].numpy()
    cu, cv = cluster[tree.edge_index[0].numpy()], cluster[tree.edge_index[1].numpy()]
    count = tree.num_clusters[level]
    u, v, _ = undirected_edges(np.stack([cu, cv]), count)
    return u, v


def cluster_distances(tree: HACTree, level: int) -> torch.Tensor:
    """Shortest-path distances between all clusters of one level, ``LongTensor[C_l, C_l]`` (-1 between different
    components), in the cluster graph of that level. The relative hierarchical PE of nodes ``a, b`` at this level is
    ``cluster_distances(tree, l)[tree.levels[l][a], tree.levels[l][b]]`` (e.g. an attention bias). O(C_l²) memory."""
    if not 0 <= level <= tree.depth:
        raise ValueError(f"level must be in [0, {tree.depth}], got {level}")
    count = tree.num_clusters[level]
    indptr, indices = csr(*_cluster_edges(tree, level), count)
    source, node, hops = bfs(indptr, indices, np.arange(count))
    dist = np.full((count, count), -1, dtype=np.int64)
    dist[source, node] = hops
    return torch.from_numpy(dist)


def hierarchical_pe(tree: HACTree) -> torch.Tensor:
    """Per-node hierarchical positional encoding, ``LongTensor[num_nodes, depth]``: column ``l`` is the
    shortest-path distance, in the level-``l`` cluster graph restricted to the node's level-``l + 1`` parent, from
    the node's level-``l`` cluster to the parent's first child in the HAC-DFS order (its anchor).

    GSM++ defines the PE as the distance between the clusters of two nodes at each level [?: how it enters the
    model is not stated]; this per-node form (the distance to a shared reference inside each parent) is usable by
    any sequence model, and with the HAC-DFS rank it locates the node in the tree. For the pairwise form see
    :func:`cluster_distances`."""
    ranks = _sibling_ranks(tree)
    pe = np.zeros((tree.num_nodes, tree.depth), dtype=np.int64)
    for level, (parent, rank) in enumerate(zip(tree.parents, ranks)):
        parent = parent.numpy()
        u, v = _cluster_edges(tree, level)
        inside = parent[u] == parent[v]
        indptr, indices = csr(u[inside], v[inside], parent.size)
        _, cluster, hops = bfs(indptr, indices, np.flatnonzero(rank == 0))
        dist = np.empty(parent.size, dtype=np.int64)
        dist[cluster] = hops
        pe[:, level] = dist[tree.levels[level].numpy()]
    return torch.from_numpy(pe)
