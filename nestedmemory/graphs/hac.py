"""Hierarchical affinity clustering (HAC) tree for GSM++'s tokenisation (Behrouz et al., ICML 2025,
arXiv 2411.15671, §4; NEXT-WAVE.md §4.2): affinity clustering of Bateni et al. (NeurIPS 2017) in Borůvka rounds.

Each round, every current cluster picks its highest-affinity edge to another cluster; the connected components of
the picked edges merge into the next level's clusters; rounds repeat until no edge crosses two clusters (one cluster
per connected component). The affinity between two clusters is the maximum over the edges crossing them (single
linkage), so the rounds are exactly Borůvka's algorithm for a maximum spanning forest, and the number of active
clusters at least halves each round: depth <= ceil(log2 num_nodes).

Ties. Edges are ranked by a strict total order: affinity, then the sorted pair of the endpoints' 1-WL colours
(:func:`~nestedmemory.graphs.structure.wl_colours`, from the features and the graph, never from ids), then the
sorted pair of node ids. With a strict order the picks form a forest plus one mutual pair per merged group, so
components come from pointer jumping, and the tree is a deterministic function of the labelled graph. Relabelling the
nodes gives the same partitions (as sets of nodes) and the same ordered tree whenever no two edges tie on
(affinity, colour pair); the id comparison decides only among 1-WL-equivalent nodes, e.g. automorphic ones (a
featureless cycle), where no label-invariant choice exists and the result is invariant up to that symmetry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .structure import check_graph, check_node_features, common_neighbours, undirected_edges, wl_colours

__all__ = ["HACTree", "hac_tree", "edge_affinity"]


def edge_affinity(u: np.ndarray, v: np.ndarray, num_nodes: int, x: np.ndarray | None = None) -> np.ndarray:
    """Default affinities of undirected edges ``(u, v)``: the cosine similarity of the node features ``x`` (rows of
    zero norm have similarity 0 to everything); without features, the cosine similarity of the closed
    neighbourhoods' indicator vectors, ``|N[u] ∩ N[v]| / sqrt(|N[u]| |N[v]|)`` (the adjacency rows as features)."""
    if x is not None:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        unit = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
        return np.einsum("ed,ed->e", unit[u], unit[v])
    deg = np.bincount(np.concatenate([u, v]), minlength=num_nodes) + 1.0
    return (common_neighbours(u, v, num_nodes) + 2.0) / np.sqrt(deg[u] * deg[v])


@dataclass(frozen=True)
class HACTree:
    """An HAC tree with ``depth`` Borůvka rounds, stored level by level (level 0 = the nodes).

    * ``levels[l]``: ``LongTensor[num_nodes]``, the cluster of each node after ``l`` rounds; ``levels[0]`` is
      ``arange(num_nodes)`` and ``levels[depth]`` one cluster per connected component. At levels ``l >= 1`` the
      clusters are numbered ``0..C_l-1`` in the order of their smallest node key (see ``node_key``).
    * ``parents[l]``: ``LongTensor[C_l]``, the level-``l + 1`` cluster containing each level-``l`` cluster.
    * ``merge_rank[l]``: ``LongTensor[C_l]``, the position, in the strict edge order (larger = higher affinity),
      of the edge each level-``l`` cluster picked in round ``l + 1``; ``-1`` for a cluster with no edge left (its
      component is finished and it is its own parent).
    * ``merge_affinity[l]``: ``Tensor[C_l]`` (float64), that edge's affinity; ``nan`` where ``merge_rank`` is -1.
    * ``node_key``: ``LongTensor[num_nodes]``, the rank of each node by (1-WL colour, id): the label-invariant
      tie-break the tokenisers share.
    * ``edge_index``: ``LongTensor[2, E]``, the simple undirected graph the tree was built on (``u < v``, each pair
      once), for the tokenisers that need the cluster graphs.
    """

    levels: list[torch.Tensor]
    parents: list[torch.Tensor]
    merge_rank: list[torch.Tensor]
    merge_affinity: list[torch.Tensor]
    node_key: torch.Tensor
    edge_index: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.levels[0].numel()

    @property
    def depth(self) -> int:
        return len(self.parents)

    @property
    def num_clusters(self) -> list[int]:
        """``C_l`` per level, ``l = 0..depth``."""
        return [p.numel() for p in self.parents] + [int(self.levels[-1].max()) + 1]

    def parent(self) -> torch.Tensor:
        """The tree as one parent array over all its vertices: level-``l`` cluster ``c`` is vertex
        ``sum(num_clusters[:l]) + c``; a top-level cluster's parent is -1."""
        offsets = np.cumsum([0] + self.num_clusters)
        out = [p + offsets[l + 1] for l, p in enumerate(self.parents)]
        return torch.cat(out + [torch.full((self.num_clusters[-1],), -1, dtype=torch.long)])


def _components(pointer: np.ndarray) -> np.ndarray:
    """Roots of a functional graph whose only cycles are self-loops and mutual pairs (Borůvka's picks under a
    strict edge order): each mutual pair is cut at its smaller id, then pointer jumping to the roots."""
    ids = np.arange(pointer.size)
    pointer = np.where((pointer[pointer] == ids) & (ids < pointer), ids, pointer)
    while True:
        jumped = pointer[pointer]
        if np.array_equal(jumped, pointer):
            return pointer
        pointer = jumped


def hac_tree(edge_index, num_nodes: int, *, x=None, edge_weight=None) -> HACTree:
    """Build the HAC tree of a graph by Borůvka rounds of affinity clustering (module docstring).

    ``edge_index``: ``[2, num_edges]`` in PyG's convention, read as an undirected simple graph. Affinity of an edge:
    ``edge_weight`` (one finite value per column; a pair listed several times takes its maximum) if given, else
    :func:`edge_affinity` (cosine of ``x``, or of the closed neighbourhoods without ``x``). ``x``
    (``[num_nodes, features]``) also feeds the colour tie-break. Costs O(num_edges) numpy work per round.
    """
    ei = check_graph(edge_index, num_nodes)
    feats = None if x is None else check_node_features(x, num_nodes) + 0.0  # + 0.0 maps -0.0 to 0.0
    weight = None
    if edge_weight is not None:
        weight = np.asarray(edge_weight.detach().cpu() if isinstance(edge_weight, torch.Tensor) else edge_weight,
                            dtype=np.float64)
        if weight.shape != (ei.shape[1],):
            raise ValueError(f"edge_weight must have shape [num_edges={ei.shape[1]}], got {tuple(weight.shape)}")
        if not np.isfinite(weight).all():
            raise ValueError("edge_weight must be finite")
    u, v, w = undirected_edges(ei, num_nodes, weight)
    if w is None:
        w = edge_affinity(u, v, num_nodes, feats)

    node_key = np.empty(num_nodes, dtype=np.int64)
    node_key[np.lexsort((np.arange(num_nodes), wl_colours(u, v, num_nodes, feats)))] = np.arange(num_nodes)
    lo, hi = np.minimum(node_key[u], node_key[v]), np.maximum(node_key[u], node_key[v])
    by_rank = np.lexsort((-hi, -lo, w))  # ascending preference: higher affinity, then smaller key pair, wins
    rank = np.empty(u.size, dtype=np.int64)
    rank[by_rank] = np.arange(u.size)

    cluster = np.arange(num_nodes)
    levels, parents, merge_rank = [cluster], [], []
    while True:
        cu, cv = cluster[u], cluster[v]
        cross = cu != cv
        if not cross.any():
            break
        count = cluster.max() + 1
        best = np.full(count, -1, dtype=np.int64)
        np.maximum.at(best, cu[cross], rank[cross])
        np.maximum.at(best, cv[cross], rank[cross])
        has = best >= 0
        edge = by_rank[best[has]]
        ids = np.arange(count)
        pointer = ids.copy()
        pointer[has] = np.where(cu[edge] == ids[has], cv[edge], cu[edge])
        root = _components(pointer)
        first = np.full(count, num_nodes, dtype=np.int64)  # each new cluster's smallest node key
        np.minimum.at(first, root[cluster], node_key)
        roots = np.flatnonzero(root == ids)
        new_id = np.empty(count, dtype=np.int64)
        new_id[roots[np.argsort(first[roots])]] = np.arange(roots.size)
        parent = new_id[root]
        parents.append(parent)
        merge_rank.append(best)
        cluster = parent[cluster]
        levels.append(cluster)

    def tensors(arrays):
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]

    merge_affinity = [np.where(r >= 0, w[by_rank[np.maximum(r, 0)]], np.nan) for r in merge_rank]
    return HACTree(tensors(levels), tensors(parents), tensors(merge_rank), tensors(merge_affinity),
                   torch.from_numpy(node_key), torch.from_numpy(np.stack([u, v])))
