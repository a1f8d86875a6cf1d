"""GSM++ tokenisers (nestedmemory.graphs.hac / tokenize / transforms): the HAC tree against a literal Borůvka, node
locality of the HAC-DFS order, permutation invariance, k-hop sets and the hierarchical PE against networkx, and
one-line errors on bad input."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from nestedmemory.graphs import (
    cluster_distances, degree_order, hac_bfs_tokens, hac_dfs_order, hac_tree, hierarchical_pe, khop_tokens,
    random_order,
)

nx = pytest.importorskip("networkx")


def edge_index_of(graph):
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(np.concatenate([edges, edges[:, ::-1]]).T.copy())


def random_graph(n, p, seed):
    return nx.gnp_random_graph(n, p, seed=seed)


def partition(labels):
    groups = {}
    for v, c in enumerate(labels):
        groups.setdefault(int(c), set()).add(v)
    return frozenset(frozenset(g) for g in groups.values())


def brute_boruvka(n, edges, key):
    """Literal Borůvka rounds of affinity clustering: every cluster scans all edges for its best crossing edge
    (largest ``key``), then the picked edges are merged with a dict union-find. Returns one partition per level."""
    cluster = list(range(n))
    levels = [partition(cluster)]
    while True:
        picks = []
        for c in sorted(set(cluster)):
            best = None
            for (a, b), k in zip(edges, key):
                if (cluster[a] == c) != (cluster[b] == c) and (best is None or k > best[0]):
                    best = (k, a, b)
            if best is not None:
                picks.append(best)
        if not picks:
            return levels
        parent = {c: c for c in set(cluster)}

        def find(c):
            while parent[c] != c:
                c = parent[c]
            return c

        for _, a, b in picks:
            ra, rb = find(cluster[a]), find(cluster[b])
            if ra != rb:
                parent[ra] = rb
        cluster = [find(c) for c in cluster]
        levels.append(partition(cluster))


def cosine(x, a, b):
    return float(x[a] @ x[b] / (np.linalg.norm(x[a]) * np.linalg.norm(x[b])))


@pytest.mark.parametrize("seed", range(6))
def test_hac_matches_brute_force_boruvka(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 30))
    graph = random_graph(n, rng.uniform(0.05, 0.4), seed)
    x = rng.standard_normal((n, 4))
    tree = hac_tree(edge_index_of(graph), n, x=torch.from_numpy(x))
    edges = list(graph.edges())
    expected = brute_boruvka(n, edges, [cosine(x, a, b) for a, b in edges])
    assert [partition(level.tolist()) for level in tree.levels] == expected
    # explicit weights replace the features' cosine
    weight = rng.standard_normal(len(edges))
    tree = hac_tree(edge_index_of(graph), n, edge_weight=torch.from_numpy(np.concatenate([weight, weight])))
    assert [partition(level.tolist()) for level in tree.levels] == brute_boruvka(n, edges, list(weight))


@pytest.mark.parametrize("seed", range(3))
def test_hac_with_tied_affinities_follows_its_strict_edge_order(seed):
    """All weights equal: the documented order (affinity, then the sorted pair of node keys, smaller first)."""
    n = 25
    graph = random_graph(n, 0.2, seed)
    tree = hac_tree(edge_index_of(graph), n, edge_weight=torch.ones(2 * graph.number_of_edges()))
    key = tree.node_key.tolist()
    edges = list(graph.edges())
    order = [(1.0, -min(key[a], key[b]), -max(key[a], key[b])) for a, b in edges]
    assert [partition(level.tolist()) for level in tree.levels] == brute_boruvka(n, edges, order)


def test_hac_tree_structure():
    n = 60
    graph = nx.disjoint_union(random_graph(40, 0.1, 1), random_graph(20, 0.3, 2))
    tree = hac_tree(edge_index_of(graph), n, x=torch.randn(n, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(tree.levels[0], torch.arange(n))
    assert tree.depth <= math.ceil(math.log2(n))
    for level, (parent, merge) in enumerate(zip(tree.parents, tree.merge_rank)):
        assert torch.equal(tree.levels[level + 1], parent[tree.levels[level]])
        assert tree.num_clusters[level + 1] < tree.num_clusters[level]
        assert torch.isnan(tree.merge_affinity[level]).equal(merge < 0)
    assert partition(tree.levels[-1].tolist()) == partition(
        [next(i for i, c in enumerate(nx.connected_components(graph)) if v in c) for v in range(n)])
    parent = tree.parent()
    assert parent.numel() == sum(tree.num_clusters) and (parent == -1).sum() == tree.num_clusters[-1]


def test_edgeless_and_single_node_graphs():
    tree = hac_tree(torch.zeros(2, 0, dtype=torch.long), 3)
    assert tree.depth == 0 and tree.num_clusters == [3]
    assert sorted(hac_dfs_order(tree).tolist()) == [0, 1, 2]
    assert hierarchical_pe(tree).shape == (3, 0) and hac_bfs_tokens(tree).seq.tolist() == [[0], [1], [2]]
    single = hac_tree(torch.tensor([[0], [0]]), 1)  # a self-loop only
    assert single.depth == 0 and hac_dfs_order(single).tolist() == [0]


def geometric_graph(n, seed):
    graph = nx.random_geometric_graph(n, math.sqrt(8 / (math.pi * n)), seed=seed)
    pos = np.array([graph.nodes[v]["pos"] for v in range(n)])
    return edge_index_of(graph), torch.from_numpy(pos)


@pytest.mark.parametrize("features", [True, False])
def test_hac_dfs_order_has_node_locality(features):
    """GSM++ Theorem 6 (node locality): adjacent nodes are close in the HAC-DFS order; DATA.md §4 measured ~10×."""
    n = 1500
    edge_index, pos = geometric_graph(n, 0)
    tree = hac_tree(edge_index, n, x=pos if features else None)
    perm = hac_dfs_order(tree)
    assert sorted(perm.tolist()) == list(range(n))

    def spread(order):
        rank = order.argsort()
        return (rank[edge_index[0]] - rank[edge_index[1]]).abs().float().mean().item()

    random_spread = np.mean([spread(random_order(n, seed)) for seed in range(3)])
    assert spread(perm) < 0.5 * random_spread
    for level in tree.levels:  # every cluster is one contiguous run of the order
        runs = level[perm]
        assert (runs[1:] != runs[:-1]).sum() + 1 == level.unique().numel()


def relabel(edge_index, x, perm):
    """Node v becomes perm[v]."""
    inverse = perm.argsort()
    return perm[edge_index], x[inverse]


@pytest.mark.parametrize("seed", range(3))
def test_relabelling_permutes_tree_orders_and_pe(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 50
    edge_index = edge_index_of(random_graph(n, 0.08, seed))
    x = torch.randn(n, 3, generator=gen)
    perm = torch.randperm(n, generator=gen)
    edge_index2, x2 = relabel(edge_index, x, perm)
    for weight in (None, torch.ones(edge_index.shape[1])):  # tied affinities: broken by 1-WL colours, not ids
        tree = hac_tree(edge_index, n, x=x, edge_weight=weight)
        tree2 = hac_tree(edge_index2, n, x=x2, edge_weight=weight)
        assert tree.depth == tree2.depth
        for level, level2 in zip(tree.levels[1:], tree2.levels[1:]):
            assert torch.equal(level2[perm], level)  # same partition, same cluster numbering
        assert torch.equal(hac_dfs_order(tree2).argsort()[perm], hac_dfs_order(tree).argsort())
        assert torch.equal(hierarchical_pe(tree2)[perm], hierarchical_pe(tree))
    for descending in (False, True):
        rank = degree_order(edge_index, n, x=x, descending=descending).argsort()
        assert torch.equal(degree_order(edge_index2, n, x=x2, descending=descending).argsort()[perm], rank)


def test_degree_and_random_orders():
    graph = nx.barabasi_albert_graph(40, 2, seed=0)
    perm = degree_order(edge_index_of(graph), 40)
    degree = [graph.degree(int(v)) for v in perm]
    assert degree == sorted(degree)
    assert torch.equal(random_order(40, seed=3), random_order(40, seed=3))
    assert not torch.equal(random_order(40, seed=3), random_order(40, seed=4))


@pytest.mark.parametrize("cumulative", [True, False])
def test_khop_tokens_match_networkx(cumulative):
    n, k = 30, 3
    graph = random_graph(n, 0.1, 5)
    tokens = khop_tokens(edge_index_of(graph), n, k, cumulative=cumulative)
    assert tokens.seq.shape == (n, k + 1)
    members = {}
    for token, node in tokens.members.T.tolist():
        members.setdefault(token, set()).add(node)
    for v in range(n):
        dist = nx.single_source_shortest_path_length(graph, v, cutoff=k)
        for i in range(k + 1):
            want = {u for u, d in dist.items() if (d <= i if cumulative else d == i)}
            assert members.get(int(tokens.seq[v, i]), set()) == want
    x = torch.randn(n, 5, dtype=torch.float64)
    pooled = tokens.pool(x)
    assert torch.allclose(pooled.reshape(-1, 5), tokens.matrix(torch.float64) @ x)
    v, i = 7, 2
    want = sorted(members.get(int(tokens.seq[v, i]), set()))
    assert torch.allclose(pooled[v, i], x[want].mean(0) if want else torch.zeros(5, dtype=torch.float64))
    summed = dataclasses.replace(tokens, reduce="sum")  # sum pooling: a 1-hop token of ones holds the degree + 1
    assert torch.allclose(summed.pool(x).reshape(-1, 5), summed.matrix(torch.float64) @ x)
    assert torch.allclose(summed.pool(x)[v, i], x[want].sum(0))
    if cumulative:
        degree = torch.tensor([graph.degree(u) for u in range(n)], dtype=torch.float64)
        assert torch.equal(summed.pool(torch.ones(n, 1, dtype=torch.float64))[:, 1, 0], degree + 1)
    with pytest.raises(ValueError, match="unknown token pooling 'max'"):
        dataclasses.replace(tokens, reduce="max")


def test_hac_bfs_tokens_are_ancestors_coarse_to_fine():
    n = 40
    edge_index = edge_index_of(random_graph(n, 0.1, 3))
    tree = hac_tree(edge_index, n)
    tokens = hac_bfs_tokens(tree)
    assert tokens.seq.shape == (n, tree.depth + 1)
    offsets = np.cumsum([0] + tree.num_clusters)
    for j in range(tree.depth + 1):
        level = tree.depth - j
        assert torch.equal(tokens.seq[:, j], tree.levels[level] + int(offsets[level]))
    x = torch.randn(n, 4, dtype=torch.float64)
    pooled = tokens.pool(x)
    assert torch.allclose(pooled[:, -1], x)
    top = tree.levels[-1]
    assert torch.allclose(pooled[5, 0], x[top == top[5]].mean(0))


def quotient(tree, edge_index, level, within_parent):
    graph = nx.Graph()
    graph.add_nodes_from(range(tree.num_clusters[level]))
    cluster = tree.levels[level]
    for a, b in edge_index.T.tolist():
        ca, cb = int(cluster[a]), int(cluster[b])
        if ca != cb and (not within_parent or tree.parents[level][ca] == tree.parents[level][cb]):
            graph.add_edge(ca, cb)
    return graph


def test_hierarchical_pe_and_cluster_distances_match_networkx():
    n = 120
    edge_index, pos = geometric_graph(n, 4)
    tree = hac_tree(edge_index, n, x=pos)
    pe = hierarchical_pe(tree)
    perm = hac_dfs_order(tree)
    assert pe.shape == (n, tree.depth)
    for level in range(tree.depth):
        graph = quotient(tree, edge_index, level, within_parent=True)
        cluster, parent = tree.levels[level], tree.levels[level + 1]
        for v in range(n):
            first = next(int(u) for u in perm if parent[u] == parent[v])  # the parent's first node in DFS order
            want = nx.shortest_path_length(graph, int(cluster[first]), int(cluster[v]))
            assert pe[v, level] == want
    for level in (0, 1, tree.depth):
        dist = cluster_distances(tree, level)
        lengths = dict(nx.all_pairs_shortest_path_length(quotient(tree, edge_index, level, within_parent=False)))
        want = [[lengths[a].get(b, -1) for b in range(dist.shape[0])] for a in range(dist.shape[0])]
        assert dist.tolist() == want


@pytest.mark.parametrize("call, message", [
    (lambda: hac_tree(torch.tensor([[0, 1], [1, 5]]), 5), "outside [0, 5)"),
    (lambda: hac_tree(torch.tensor([[0, -1], [1, 2]]), 5), "outside [0, 5)"),
    (lambda: hac_tree(torch.tensor([0, 1, 2]), 5), "shape [2, num_edges]"),
    (lambda: hac_tree(torch.zeros(3, 4, dtype=torch.long), 5), "shape [2, num_edges]"),
    (lambda: hac_tree(torch.tensor([[0.0, 1.0], [1.0, 2.0]]), 5), "integer node ids"),
    (lambda: hac_tree(torch.tensor([[0], [1]]), 0), "num_nodes must be a positive integer"),
    (lambda: hac_tree(torch.tensor([[0], [1]]), 3, x=torch.ones(2, 4)), "x must have shape"),
    (lambda: hac_tree(torch.tensor([[0], [1]]), 3, x=torch.full((3, 1), float("nan"))), "x must be finite"),
    (lambda: hac_tree(torch.tensor([[0], [1]]), 3, edge_weight=torch.ones(2)), "edge_weight must have shape"),
    (lambda: hac_tree(torch.tensor([[0], [1]]), 3, edge_weight=torch.tensor([float("inf")])), "finite"),
    (lambda: khop_tokens(torch.tensor([[0], [1]]), 3, -1), "k must be a non-negative integer"),
    (lambda: khop_tokens(torch.tensor([[0], [4]]), 3, 2), "outside [0, 3)"),
    (lambda: degree_order(torch.tensor([[0], [1]]), 3, x=torch.ones(4, 1)), "x must have shape"),
    (lambda: random_order(0), "num_nodes must be a positive integer"),
    (lambda: cluster_distances(hac_tree(torch.tensor([[0], [1]]), 3), 5), "level must be in"),
])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_add_hac_order_transform_batches_graphs_of_different_depths():
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import Batch, Data

    from nestedmemory.graphs.transforms import AddHACOrder

    graphs = [Data(x=torch.randn(n, 2), edge_index=edge_index_of(random_graph(n, 0.15, n)), num_nodes=n)
              for n in (6, 30, 70)]
    transform = AddHACOrder(num_levels=8)
    out = [transform(g.clone()) for g in graphs]
    for g, data in zip(graphs, out):
        tree = hac_tree(g.edge_index, g.num_nodes, x=g.x)
        assert torch.equal(data.hac_rank, hac_dfs_order(tree).argsort())
        assert data.hac_levels.shape == (g.num_nodes, 8) and data.hac_pe.shape == (g.num_nodes, 7)
        assert torch.equal(data.hac_levels[:, : tree.depth + 1], torch.stack(tree.levels, 1))
        assert torch.equal(data.hac_levels[:, -1], tree.levels[-1])
        assert torch.equal(data.hac_pe[:, : tree.depth], hierarchical_pe(tree))
    batch = Batch.from_data_list(out)
    assert batch.hac_levels.shape == (106, 8) and batch.hac_rank.shape == (106,)
    unpadded = AddHACOrder()(graphs[0].clone())
    assert unpadded.hac_levels.shape[1] == unpadded.hac_pe.shape[1] + 1
    with pytest.raises(ValueError, match="more than num_levels=1"):
        AddHACOrder(num_levels=1)(graphs[1].clone())
