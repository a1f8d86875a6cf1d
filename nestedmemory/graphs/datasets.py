"""Graph data that is not generated: the small graphs that ship in the networkx wheel, and PyTorch Geometric datasets
from a user path (nothing downloads).

* :func:`karate` — Zachary's karate club (``karate_club_graph``), the club of each member;
* :func:`les_miserables` — the co-appearance network of *Les Misérables* (``les_miserables_graph``, 77 characters),
  each character's community in networkx's Louvain partition (seed 0; a derived label: the book has none);
* the graph atlas (``graph_atlas_g``, every graph of up to 7 nodes) is the ``atlas`` family of
  :func:`~nestedmemory.graphs.synthetic.random_graph`;
* :func:`read_pyg` — a list of PyG ``Data`` from a file written by ``InMemoryDataset.save`` (also a PyG dataset's
  ``processed/data.pt``) or a TU-format folder (``NAME_A.txt``, ``NAME_graph_indicator.txt``, …, read with
  ``torch_geometric.io.read_tu_data``).

The one-graph node tasks are transductive: every split is the same graph, ``data.mask`` selects the nodes it scores
(:func:`node_splits`: per class, :data:`NODE_SPLIT` of the nodes for training and validation). Needs ``networkx`` and
``torch_geometric``.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import torch
from torch_geometric.data import Data

__all__ = ["SPLITS", "NODE_SPLIT", "GRAPH_SPLIT", "karate", "les_miserables", "read_pyg", "node_splits",
           "graph_splits", "from_networkx"]

SPLITS = ("train", "val", "test")
#: one-graph node tasks: share of each class's nodes in the training and validation splits (the rest: test).
NODE_SPLIT = (0.5, 0.25)
#: many-graph datasets without a split of their own: share of the graphs in training and validation.
GRAPH_SPLIT = (0.8, 0.1)


def from_networkx(graph: nx.Graph) -> torch.Tensor:
    """``edge_index`` of a networkx graph with nodes ``0..n-1``: both directions of every edge."""
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).reshape(-1, 2).T
    return torch.cat([edges, edges.flip(0)], 1)


def node_splits(graph: Data, seed: int) -> dict[str, list[Data]]:
    """The one graph three times, ``mask`` selecting each split's nodes: per class of ``graph.y``, a ``seed``
    permutation cut at :data:`NODE_SPLIT`."""
    y = graph.y.numpy()
    rng = np.random.default_rng(seed)
    split = np.empty(y.size, dtype=np.int64)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        bounds = np.round(np.cumsum(NODE_SPLIT) * members.size).astype(int)
        for index, part in enumerate(np.split(members, bounds)):
            split[part] = index
    return {name: [graph.clone().update(dict(mask=torch.from_numpy(split == index)))]
            for index, name in enumerate(SPLITS)}


def graph_splits(graphs: list[Data], seed: int) -> dict[str, list[Data]]:
    """A ``seed`` shuffle of ``graphs`` cut at :data:`GRAPH_SPLIT`."""
    order = np.random.default_rng(seed).permutation(len(graphs))
    bounds = np.round(np.cumsum(GRAPH_SPLIT) * len(graphs)).astype(int)
    return {name: [graphs[i] for i in part] for name, part in zip(SPLITS, np.split(order, bounds))}


def karate(seed: int) -> dict[str, list[Data]]:
    """The karate club: one-hot node ids, the club of each member (0: Mr. Hi's)."""
    graph = nx.karate_club_graph()
    n = graph.number_of_nodes()
    y = torch.tensor([int(graph.nodes[v]["club"] != "Mr. Hi") for v in range(n)])
    return node_splits(Data(x=torch.eye(n), edge_index=from_networkx(graph), y=y, num_nodes=n), seed)


def les_miserables(seed: int) -> dict[str, list[Data]]:
    """*Les Misérables*: one-hot character ids, the character's Louvain community (``louvain_communities`` with
    seed 0 on the weighted graph; communities numbered by their smallest character in sorted name order)."""
    graph = nx.les_miserables_graph()
    names = sorted(graph.nodes())
    index = {name: i for i, name in enumerate(names)}
    communities = sorted((sorted(index[v] for v in c) for c in nx.community.louvain_communities(graph, seed=0)))
    y = torch.empty(len(names), dtype=torch.long)
    for label, members in enumerate(communities):
        y[members] = label
    relabelled = nx.relabel_nodes(graph, index)
    n = len(names)
    return node_splits(Data(x=torch.eye(n), edge_index=from_networkx(relabelled), y=y, num_nodes=n), seed)


def read_pyg(path: str | Path) -> list[Data]:
    """The graphs of a PyG dataset at ``path``: a file written by ``InMemoryDataset.save`` (or a dataset's
    ``processed/data.pt``), read with ``torch.load(weights_only=True)``, or a TU-format folder. Every graph gets
    ``x`` (ones where the data has none) and must have ``y`` and ``edge_index``. Raises ``ValueError`` naming the
    problem."""
    path = Path(path)
    if path.is_dir():
        graphs = _read_tu(path)
    elif path.is_file():
        graphs = _read_saved(path)
    else:
        raise ValueError(f"--data {path}: no such file or folder")
    if not graphs:
        raise ValueError(f"--data {path} holds no graph")
    for i, graph in enumerate(graphs):
        if getattr(graph, "y", None) is None or getattr(graph, "edge_index", None) is None:
            raise ValueError(f"--data {path}: graph {i} has no {'y' if graph.y is None else 'edge_index'}")
        if graph.x is None:
            graph.x = torch.ones(graph.num_nodes, 1)
        graph.x = graph.x.float().view(graph.num_nodes, -1)
    return graphs


def _read_saved(path: Path) -> list[Data]:
    from torch_geometric.data import InMemoryDataset

    try:
        out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle of anything: name the file, keep the cause short
        raise ValueError(f"--data {path} is not a PyG dataset file (InMemoryDataset.save): "
                         f"{' '.join(str(error).split())[:200]}") from None
    if not (isinstance(out, tuple) and 2 <= len(out) <= 4 and (out[1] is None or isinstance(out[1], dict))):
        raise ValueError(f"--data {path} is not a PyG dataset file (InMemoryDataset.save): expected (data, slices, …)")
    data_class = out[-1] if isinstance(out[-1], type) else Data
    data = data_class.from_dict(out[0]) if isinstance(out[0], dict) else out[0]
    if out[1] is None:  # InMemoryDataset.save of one graph stores it whole
        return [data]
    dataset = InMemoryDataset()
    dataset.data, dataset.slices = data, out[1]
    return [dataset[i] for i in range(len(dataset))]


def _read_tu(folder: Path) -> list[Data]:
    from torch_geometric.data import InMemoryDataset
    from torch_geometric.io import read_tu_data

    found = sorted(folder.glob("*_A.txt"))
    if len(found) != 1:
        raise ValueError(f"--data {folder} is not a TU-format folder: expected one NAME_A.txt, found {len(found)}")
    try:
        data, slices, _ = read_tu_data(str(folder), found[0].name[:-len("_A.txt")])
    except (OSError, ValueError, IndexError, RuntimeError) as error:
        raise ValueError(f"--data {folder}: cannot read the TU files: {' '.join(str(error).split())[:200]}") from None
    dataset = InMemoryDataset()
    dataset.data, dataset.slices = data, slices
    return [dataset[i] for i in range(len(dataset))]
