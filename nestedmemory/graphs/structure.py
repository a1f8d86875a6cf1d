"""Graph-structure primitives on numpy for the GSM++ tokenisers (Behrouz et al., ICML 2025, arXiv 2411.15671, §3):
input checks, the simple undirected graph behind an ``edge_index``, CSR adjacency, breadth-first distances,
label-invariant node colours (1-WL refinement) and per-edge common-neighbour counts.

Graphs arrive in PyTorch Geometric's convention, ``edge_index: LongTensor[2, num_edges]`` with node ids in
``[0, num_nodes)``; the tokenisers treat every graph as simple and undirected (directions, duplicates and self-loops
are dropped), which is what the HAC tree and hop distances are defined on.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_graph", "check_node_features", "undirected_edges", "csr", "bfs", "wl_colours", "common_neighbours"]


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def check_graph(edge_index, num_nodes: int) -> np.ndarray:
    """``edge_index`` as an ``int64`` array ``[2, num_edges]``, after checking its shape, dtype and node range."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive integer, got {num_nodes!r}")
    ei = _numpy(edge_index)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges], got {tuple(ei.shape)}")
    if ei.size and not np.issubdtype(ei.dtype, np.integer):
        raise ValueError(f"edge_index must hold integer node ids, got {ei.dtype}")
    ei = ei.astype(np.int64, copy=False)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValueError(f"edge_index holds node ids outside [0, {num_nodes}): min {ei.min()}, max {ei.max()}")
    return ei


def check_node_features(x, num_nodes: int) -> np.ndarray:
    """Node features as a finite ``float64`` array ``[num_nodes, features]`` (a 1-D input is one feature)."""
    a = _numpy(x).astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != num_nodes:
        raise ValueError(f"x must have shape [num_nodes={num_nodes}, features], got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError("x must be finite")
    return a


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D integer array (a sort, faster here than ``np.unique``'s hashing)."""
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.size else a


def _isin_sorted(query: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.isin(query, keys)`` for sorted ``keys``, by binary search."""
    at = np.minimum(np.searchsorted(keys, query), max(keys.size - 1, 0))
    return keys[at] == query if keys.size else np.zeros(query.shape, dtype=bool)


def undirected_edges(ei: np.ndarray, num_nodes: int, weight: np.ndarray | None = None):
    """The simple undirected graph of a checked ``edge_index``: ``(u, v, w)`` with ``u < v``, each pair once, sorted
    by ``(u, v)``; self-loops dropped. ``w`` (when ``weight`` is given, one value per column of ``ei``) is the
    maximum over the pair's columns in either direction, so a pair's weight does not depend on how it was listed."""
    u, v = np.minimum(ei[0], ei[1]), np.maximum(ei[0], ei[1])
    keep = u != v
    key = u[keep] * num_nodes + v[keep]
    pairs = _unique(key)
    w = None
    if weight is not None:
        w = np.full(pairs.size, -np.inf)
        np.maximum.at(w, np.searchsorted(pairs, key), weight[keep])
    return pairs // num_nodes, pairs % num_nodes, w


def csr(u: np.ndarray, v: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of the symmetric adjacency of undirected edges ``(u, v)``; neighbours sorted by id."""
    src, dst = np.concatenate([u, v]), np.concatenate([v, u])
    order = np.lexsort((dst, src))
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_nodes), out=indptr[1:])
    return indptr, dst[order]


def _neighbours(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ``(i, w)`` with ``w`` a neighbour of ``nodes[i]``, as two flat arrays."""
    deg = indptr[nodes + 1] - indptr[nodes]
    row = np.repeat(np.arange(nodes.size), deg)
    start = np.repeat(indptr[nodes] - np.cumsum(deg) + deg, deg)
    return row, indices[start + np.arange(row.size)]


def bfs(indptr: np.ndarray, indices: np.ndarray, sources: np.ndarray, max_hops: int | None = None):
    """Breadth-first search from every source at once, each search on its own: all ``(s, node, hops)`` with
    ``hops = d(sources[s], node) <= max_hops`` (``None``: no limit), as three arrays sorted by ``(s, hops, node)``.
    Layer ``d + 1`` is the neighbours of layer ``d`` minus layers ``d`` and ``d - 1`` (in an undirected graph no
    other layer is adjacent). Cost: O(sum over sources of the edges inside the explored ball)."""
    n = indptr.size - 1
    previous = np.zeros(0, dtype=np.int64)
    layer = _unique(np.arange(sources.size) * n + sources.astype(np.int64))  # keys s * n + node
    layers = [layer]
    while layer.size and (max_hops is None or len(layers) <= max_hops):
        i, w = _neighbours(indptr, indices, layer % n)
        key = _unique(layer[i] // n * n + w)
        key = key[~(_isin_sorted(key, layer) | _isin_sorted(key, previous))]
        previous, layer = layer, key
        if key.size:
            layers.append(key)
    key = np.concatenate(layers)
    hops = np.repeat(np.arange(len(layers)), [a.size for a in layers])
    order = np.lexsort((key, hops, key // n))
    return key[order] // n, key[order] % n, hops[order]


def _splitmix64(a: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014) on ``uint64``: a fixed, well-mixed hash of each value."""
    z = a.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def wl_colours(u: np.ndarray, v: np.ndarray, num_nodes: int, x: np.ndarray | None = None) -> np.ndarray:
    """Label-invariant node colours ``0..C-1`` by 1-WL colour refinement (Weisfeiler–Leman): start from the rank of
    each node's feature row (all equal without ``x``), then repeatedly recolour a node by the rank of
    ``(colour, hash of the multiset of neighbour colours)`` until the number of colours stops growing.

    Relabelling the nodes permutes the colours with them (the ranks come from sorting values, never ids). Nodes
    with equal colours are indistinguishable to 1-WL; automorphic nodes always are. The multiset hash is a sum of
    splitmix64 values modulo 2**64, so two different multisets share a colour only by a 64-bit collision."""
    if x is None:
        colour = np.zeros(num_nodes, dtype=np.int64)
    else:
        colour = np.unique(x, axis=0, return_inverse=True)[1].reshape(-1)
    count = colour.max() + 1
    src, dst = np.concatenate([u, v]), np.concatenate([v, u])
    while count < num_nodes:
        hashed = np.zeros(num_nodes, dtype=np.uint64)
        np.add.at(hashed, src, _splitmix64(colour[dst]))
        pair = np.stack([colour.astype(np.uint64), hashed], axis=1)
        refined = np.unique(pair, axis=0, return_inverse=True)[1].reshape(-1)
        if refined.max() + 1 == count:
            break
        colour, count = refined, refined.max() + 1
    return colour


def common_neighbours(u: np.ndarray, v: np.ndarray, num_nodes: int) -> np.ndarray:
    """For each undirected edge ``(u[e], v[e])`` (pairs unique, ``u < v``), the number of common neighbours (the
    triangles through the edge). Scans the smaller-degree endpoint's list: O(sum over edges of the smaller degree)."""
    indptr, indices = csr(u, v, num_nodes)
    deg = np.diff(indptr)
    small = np.where(deg[u] <= deg[v], u, v)
    large = u + v - small
    e, w = _neighbours(indptr, indices, small)
    key = np.sort(np.concatenate([u * num_nodes + v, v * num_nodes + u]))
    return np.bincount(e[_isin_sorted(large[e] * num_nodes + w, key)], minlength=u.size)
