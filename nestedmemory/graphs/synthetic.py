"""GSM++'s synthetic graph tasks, generated in-repo with networkx (Behrouz et al., ICML 2025, arXiv 2411.15671,
Tables 1–2; DATA.md §4 offline test plan, GraphQA-style):

* local: ``node_degree`` (node-level class = degree), ``cycle_check`` (graph has a cycle), ``triangle_count``
  (number of triangles; Erdős–Rényi vs random regular graphs);
* global: ``connectivity`` (is there a path between two marked nodes), ``color_count`` (nodes of each colour),
  ``shortest_path`` (hop distance between two marked nodes of one component).

Every label is computed by networkx on the generated graph. Every draw comes from ``numpy.random.default_rng(seed)``
(networkx generators get integer seeds from it), so a dataset is a function of its arguments. Graphs are PyG
``Data`` objects when ``torch_geometric`` is installed, else dicts of the same tensors. All are synthetic.
"""

from __future__ import annotations

from functools import lru_cache

import networkx as nx
import numpy as np
import torch

__all__ = ["FAMILIES", "ATLAS_NODES", "TASKS", "random_graph", "graph_task"]

FAMILIES = ("er", "ba", "sbm", "holme_kim", "regular", "geometric", "tree", "tree_plus", "forest", "complete", "star",
            "path", "atlas")
#: the graph atlas (networkx's ``graph_atlas_g``) has every graph of up to this many nodes.
ATLAS_NODES = 7

#: task -> graph family used when none is given.
TASKS = {
    "node_degree": "er",
    "cycle_check": "tree_plus",
    "triangle_count": "er",
    "connectivity": "sbm",
    "color_count": "er",
    "shortest_path": "er",
}


def random_graph(family: str, num_nodes: int, rng: np.random.Generator) -> nx.Graph:
    """A random graph with nodes ``0..num_nodes-1`` from one of :data:`FAMILIES`:

    * ``er``: G(n, p), mean degree uniform in [1, 5]; ``ba``: Barabási–Albert, m in {1, 2, 3}; ``holme_kim``:
      powerlaw-cluster (scale-free with triangles), m in {1, 2, 3}, p = 0.5; ``regular``: random 3- or 4-regular
      (4 when n is odd); ``geometric``: random geometric graph in the unit square, mean degree about 6;
    * ``sbm``: 2–4 equal blocks, within-block mean degree 4, about one between-block edge per graph (often
      disconnected, for connectivity);
    * ``tree``: uniform random labelled tree; ``tree_plus``: such a tree plus, with probability 1/2, 1–3 extra edges
      (so half the graphs have cycles); ``forest``: 2 or 3 uniform random labelled trees of (nearly) equal size, the
      node ids shuffled: sparse components whose nodes are many hops apart (connectivity as a global task);
      ``complete``, ``star``, ``path``;
    * ``atlas``: a uniform draw among the graphs of the graph atlas with ``num_nodes`` nodes and at least one edge
      (every graph of up to :data:`ATLAS_NODES` nodes, up to isomorphism).
    """
    n, seed = num_nodes, int(rng.integers(2 ** 31))
    if family == "er":
        return nx.gnp_random_graph(n, min(1.0, rng.uniform(1, 5) / (n - 1)), seed=seed)
    if family == "ba":
        return nx.barabasi_albert_graph(n, int(rng.integers(1, 4)), seed=seed)
    if family == "holme_kim":
        return nx.powerlaw_cluster_graph(n, int(rng.integers(1, 4)), 0.5, seed=seed)
    if family == "regular":
        return nx.random_regular_graph(4 if n % 2 else int(rng.integers(3, 5)), n, seed=seed)
    if family == "geometric":
        return nx.random_geometric_graph(n, np.sqrt(6 / (np.pi * n)), seed=seed)
    if family == "sbm":
        sizes = [len(b) for b in np.array_split(np.arange(n), int(rng.integers(2, 5)))]
        p_in = [min(1.0, 4 / max(s - 1, 1)) for s in sizes]
        probs = [[p_in[i] if i == j else 2 / n ** 2 for j in range(len(sizes))] for i in range(len(sizes))]
        return nx.stochastic_block_model(sizes, probs, seed=seed)
    if family in ("tree", "tree_plus"):
        tree = nx.random_labeled_tree(n, seed=seed)
        if family == "tree_plus" and rng.random() < 0.5:
            target = n - 1 + int(rng.integers(1, 4))
            while tree.number_of_edges() < target:  # a tree misses all but n - 1 of the pairs: few redraws
                a, b = rng.choice(n, size=2, replace=False)
                tree.add_edge(int(a), int(b))
        return tree
    if family == "forest":
        parts = np.array_split(rng.permutation(n), int(rng.integers(2, 4)))
        forest = nx.empty_graph(n)
        for part in parts:
            tree = nx.random_labeled_tree(len(part), seed=int(rng.integers(2 ** 31)))
            forest.add_edges_from((int(part[a]), int(part[b])) for a, b in tree.edges())
        return forest
    if family == "atlas":
        choices = _atlas(n)
        return nx.convert_node_labels_to_integers(choices[int(rng.integers(len(choices)))])
    if family == "complete":
        return nx.complete_graph(n)
    if family == "star":
        return nx.star_graph(n - 1)
    if family == "path":
        return nx.path_graph(n)
    raise ValueError(f"unknown graph family {family!r}: choose one of {', '.join(FAMILIES)}")


@lru_cache(maxsize=None)
def _atlas(num_nodes: int) -> tuple[nx.Graph, ...]:
    """The atlas graphs with ``num_nodes`` nodes and at least one edge."""
    if num_nodes > ATLAS_NODES:
        raise ValueError(f"the graph atlas has graphs of at most {ATLAS_NODES} nodes, got num_nodes {num_nodes}")
    return tuple(g for g in nx.graph_atlas_g() if g.number_of_nodes() == num_nodes and g.number_of_edges())


def _edge_index(graph: nx.Graph) -> torch.Tensor:
    """Both directions of every edge, ``LongTensor[2, 2 * num_edges]`` sorted by (source, target)."""
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([edges, edges[:, ::-1]])
    return torch.from_numpy(both[np.lexsort((both[:, 1], both[:, 0]))].T.copy())


def _pack(**fields):
    """A PyG ``Data`` of the fields when ``torch_geometric`` is importable, else the dict itself."""
    try:
        from torch_geometric.data import Data
    except ImportError:
        return fields
    return Data(**fields)


def _marked(num_nodes: int, a: int, b: int) -> torch.Tensor:
    x = torch.zeros(num_nodes, 1)
    x[[a, b], 0] = 1.0
    return x


def _pair(graph: nx.Graph, rng: np.random.Generator, connected: bool) -> tuple[int, int]:
    """Two distinct nodes: in one component if ``connected`` (the first uniform among non-isolated nodes), else in
    two different components when the graph has several (uniform pair otherwise)."""
    component = {v: i for i, c in enumerate(nx.connected_components(graph)) for v in c}
    nodes = np.arange(graph.number_of_nodes())
    label = np.array([component[v] for v in nodes])
    if connected:
        candidates = nodes[np.bincount(label)[label] > 1]
        if candidates.size == 0:
            raise ValueError("the graph has no edges to pick a connected pair from: use larger or denser graphs")
        a = int(rng.choice(candidates))
        return a, int(rng.choice(nodes[(label == label[a]) & (nodes != a)]))
    if label.max() > 0:
        a = int(rng.choice(nodes))
        return a, int(rng.choice(nodes[label != label[a]]))
    a, b = rng.choice(nodes, size=2, replace=False)
    return int(a), int(b)


def _example(task: str, graph: nx.Graph, rng: np.random.Generator, num_colors: int):
    n = graph.number_of_nodes()
    fields = {"edge_index": _edge_index(graph), "num_nodes": n}
    if task == "node_degree":
        degree = dict(graph.degree())
        return _pack(x=torch.ones(n, 1), y=torch.tensor([degree[v] for v in range(n)]), **fields)
    if task == "cycle_check":
        return _pack(x=torch.ones(n, 1), y=torch.tensor([int(len(nx.cycle_basis(graph)) > 0)]), **fields)
    if task == "triangle_count":
        return _pack(x=torch.ones(n, 1), y=torch.tensor([sum(nx.triangles(graph).values()) // 3]), **fields)
    if task == "color_count":
        colour = rng.integers(num_colors, size=n)
        x = torch.nn.functional.one_hot(torch.from_numpy(colour), num_colors).float()
        return _pack(x=x, y=torch.from_numpy(np.bincount(colour, minlength=num_colors))[None], **fields)
    a, b = _pair(graph, rng, connected=task == "shortest_path" or rng.random() < 0.5)
    label = nx.has_path(graph, a, b) if task == "connectivity" else nx.shortest_path_length(graph, a, b)
    return _pack(x=_marked(n, a, b), y=torch.tensor([int(label)]), pair_index=torch.tensor([[a], [b]]), **fields)


def graph_task(task: str, num_graphs: int, *, family: str | None = None, num_nodes: int | tuple[int, int] = (20, 100),
               num_colors: int = 3, seed: int = 0) -> list:
    """``num_graphs`` labelled graphs of one of GSM++'s synthetic tasks (:data:`TASKS`; module docstring).

    Each graph: ``edge_index`` (both directions), ``num_nodes``, ``x`` and ``y``:

    * ``node_degree``: ``x = 1``, ``y[v]`` = degree of ``v`` (node-level classes);
    * ``cycle_check``: ``x = 1``, ``y = [1]`` if the graph has a cycle else ``[0]``;
    * ``triangle_count``: ``x = 1``, ``y = [number of triangles]``;
    * ``connectivity`` / ``shortest_path``: ``x`` = indicator ``[n, 1]`` of the two marked nodes, also given as
      ``pair_index = [[a], [b]]`` (PyG offsets it when batching); ``y = [has_path(a, b)]`` (the pair is drawn
      connected with probability 1/2) / ``[d(a, b)]`` (always a connected pair);
    * ``color_count``: ``x`` = one-hot of ``num_colors`` uniform random colours, ``y = [[count per colour]]``.

    ``family``: a graph family of :func:`random_graph` (default: per task, :data:`TASKS`); ``num_nodes``: an int,
    or an inclusive ``(low, high)`` range drawn uniformly per graph; at least 5.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    low, high = (num_nodes, num_nodes) if isinstance(num_nodes, int) else num_nodes
    if not 5 <= low <= high:
        raise ValueError(f"num_nodes must be an int >= 5 or a range (low, high) with 5 <= low <= high, got {num_nodes}")
    if num_graphs < 0 or num_colors < 1:
        raise ValueError(f"num_graphs must be >= 0 and num_colors >= 1, got {num_graphs} and {num_colors}")
    family = TASKS[task] if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown graph family {family!r}: choose one of {', '.join(FAMILIES)}")
    rng = np.random.default_rng(seed)
    return [_example(task, random_graph(family, int(rng.integers(low, high + 1)), rng), rng, num_colors)
            for _ in range(num_graphs)]
