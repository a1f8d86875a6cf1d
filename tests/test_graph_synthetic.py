"""GSM++'s synthetic graph tasks (nestedmemory.graphs.synthetic): labels against networkx, determinism, graph
families, and the dict fallback without PyG."""

import sys

import numpy as np
import pytest
import torch

nx = pytest.importorskip("networkx")

from nestedmemory.graphs.synthetic import ATLAS_NODES, FAMILIES, TASKS, graph_task, random_graph  # noqa: E402


def fields(example):
    return example if isinstance(example, dict) else example.to_dict() | {"num_nodes": example.num_nodes}


def to_networkx(example):
    f = fields(example)
    graph = nx.Graph()
    graph.add_nodes_from(range(f["num_nodes"]))
    graph.add_edges_from(f["edge_index"].T.tolist())
    return graph


@pytest.mark.parametrize("task", list(TASKS))
def test_labels_match_networkx(task):
    examples = graph_task(task, 12, num_nodes=(10, 40), seed=1)
    labels = []
    for example in examples:
        f, graph = fields(example), to_networkx(example)
        n = f["num_nodes"]
        assert 10 <= n <= 40 and f["x"].shape[0] == n
        ei = f["edge_index"]
        assert (ei[0] != ei[1]).all() and ei.shape[1] == 2 * graph.number_of_edges()  # simple, both directions
        y = f["y"]
        if task == "node_degree":
            assert y.tolist() == [graph.degree(v) for v in range(n)]
        elif task == "cycle_check":
            assert y.tolist() == [int(not nx.is_forest(graph))]
        elif task == "triangle_count":
            assert y.tolist() == [sum(nx.triangles(graph).values()) // 3]
        elif task == "color_count":
            assert y.tolist() == [f["x"].sum(0).long().tolist()] and (f["x"].sum(1) == 1).all()
        else:
            a, b = f["pair_index"][:, 0].tolist()
            assert a != b and f["x"][:, 0].nonzero().flatten().tolist() == sorted([a, b])
            want = nx.has_path(graph, a, b) if task == "connectivity" else nx.shortest_path_length(graph, a, b)
            assert y.tolist() == [int(want)]
        labels.append(tuple(y.tolist()))
    if task in ("cycle_check", "connectivity"):
        assert len(set(labels)) == 2  # both classes occur


def test_generation_is_seeded():
    a, b, c = (graph_task("connectivity", 5, seed=s) for s in (3, 3, 4))
    for x, y in zip(a, b):
        assert all(torch.equal(fields(x)[k], fields(y)[k]) for k in ("edge_index", "x", "y", "pair_index"))
    assert any(not torch.equal(fields(x)["edge_index"], fields(z)["edge_index"]) for x, z in zip(a, c))


@pytest.mark.parametrize("family", FAMILIES)
def test_families_give_simple_graphs_on_range_nodes(family):
    n = ATLAS_NODES if family == "atlas" else 17
    graph = random_graph(family, n, np.random.default_rng(0))
    assert sorted(graph.nodes()) == list(range(n)) and nx.number_of_selfloops(graph) == 0
    if family == "regular":
        assert len({d for _, d in graph.degree()}) == 1
    if family == "tree":
        assert nx.is_tree(graph)
    if family == "forest":  # 2 or 3 trees
        assert nx.is_forest(graph) and nx.number_connected_components(graph) in (2, 3)
    if family == "atlas":  # a graph of the atlas, not an empty one
        assert graph.number_of_edges() > 0 and any(nx.is_isomorphic(graph, g) for g in nx.graph_atlas_g()[-1044:])


def test_the_atlas_has_graphs_of_at_most_seven_nodes():
    with pytest.raises(ValueError, match="the graph atlas has graphs of at most 7 nodes"):
        random_graph("atlas", 8, np.random.default_rng(0))


def test_triangles_on_regular_graphs():
    for example in graph_task("triangle_count", 4, family="regular", num_nodes=30, seed=0):
        graph = to_networkx(example)
        assert len({d for _, d in graph.degree()}) == 1
        assert fields(example)["y"].item() == sum(nx.triangles(graph).values()) // 3


def test_dicts_without_pyg(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch_geometric.data", None)
    (example,) = graph_task("node_degree", 1, num_nodes=8)
    assert isinstance(example, dict) and set(example) == {"x", "y", "edge_index", "num_nodes"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="colouring"), "unknown task"),
    (dict(task="cycle_check", family="lattice"), "unknown graph family"),
    (dict(task="cycle_check", num_nodes=3), "num_nodes must be"),
    (dict(task="cycle_check", num_nodes=(30, 20)), "num_nodes must be"),
    (dict(task="color_count", num_colors=0), "num_colors"),
])
def test_bad_arguments_raise_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        graph_task(num_graphs=2, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
