"""GSM layers and models (nestedmemory.graphs.mixers / branches / conv / models): GPSConv's convention and outputs,
batching graphs of different sizes equals one at a time, permutation invariance of the graph-level prediction, any
library mixer as the global encoder, the mixture-of-tokenisations router, a learning smoke test, one-line errors."""

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric")
pytest.importorskip("networkx")

from torch_geometric.data import Batch, Data  # noqa: E402
from torch_geometric.nn import GPSConv, ResGatedGraphConv  # noqa: E402

from nestedmemory.graphs import hac_bfs_tokens, hac_tree  # noqa: E402
from nestedmemory.graphs.branches import MixtureBranch, SequenceBranch, TokenBranch  # noqa: E402
from nestedmemory.graphs.conv import GSMConv  # noqa: E402
from nestedmemory.graphs.mixers import Attention, MixerStack, hybrid_mixer, library_mixer  # noqa: E402
from nestedmemory.graphs.models import (  # noqa: E402
    GSMModel, batch_tokens, count_parameters, gatedgcn_baseline, gps_baseline,
)
from nestedmemory.graphs.synthetic import graph_task  # noqa: E402
from nestedmemory.graphs.transforms import AddHACOrder  # noqa: E402

LEVELS = 6  # AddHACOrder's num_levels: trees of <= 32 nodes have depth <= 5
FEATURES = 3


def with_hac(data):
    return AddHACOrder(num_levels=LEVELS)(data)


def random_graphs(count, seed, sizes=(6, 14)):
    """Graphs of different sizes with distinct random fp64 features (so the HAC tree, hence every order, is exactly
    label-invariant) and the HAC fields."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in graph_task("color_count", count, num_nodes=sizes, seed=seed):
        out.append(with_hac(Data(x=torch.randn(g.num_nodes, FEATURES, generator=gen, dtype=torch.float64),
                                 edge_index=g.edge_index, num_nodes=g.num_nodes)))
    return out


def model(tokenization, mixer, task="graph", **kwargs):
    torch.manual_seed(0)
    return GSMModel(FEATURES, 16, 2, 2, tokenization, mixer, task, **kwargs).double().eval()


def relabel(data, perm):
    """Node v becomes perm[v]; the HAC fields are recomputed on the relabelled graph."""
    return with_hac(Data(x=data.x[perm.argsort()], edge_index=perm[data.edge_index], num_nodes=data.num_nodes))


def test_gsmconv_shapes_and_gps_calling_convention():
    import nestedmemory.graphs as graphs_package

    assert graphs_package.GSMConv is GSMConv and graphs_package.GSMModel is GSMModel  # lazy exports
    graphs = random_graphs(3, 0)
    batch = Batch.from_data_list(graphs)
    x = torch.randn(batch.num_nodes, 16, dtype=torch.float64)
    conv = GSMConv(16, mixer="mamba2", order="hac_dfs").double()
    assert conv(x, batch.edge_index, batch.batch, hac_rank=batch.hac_rank).shape == x.shape
    one = graphs[0]
    assert conv(x[:one.num_nodes], one.edge_index, hac_rank=one.hac_rank).shape == (one.num_nodes, 16)  # batch=None
    # extra keyword arguments reach the local MPNN, as in GPSConv
    edge_attr = torch.randn(batch.edge_index.shape[1], 2, dtype=torch.float64)
    local = GSMConv(16, conv=ResGatedGraphConv(16, 16, edge_dim=2), mixer="attention", order="none").double()
    assert local(x, batch.edge_index, batch.batch, edge_attr=edge_attr).shape == x.shape
    assert GSMConv(16, conv=None, mixer="attention", order="degree").double()(x, batch.edge_index).shape == x.shape


@pytest.mark.parametrize("training", [False, True])
def test_gsmconv_with_attention_is_gpsconv(training):
    """With GPS's attention as the mixer, GSMConv computes GPSConv (any order: attention is equivariant)."""
    torch.manual_seed(0)
    batch = Batch.from_data_list(random_graphs(3, 1))
    gps = GPSConv(16, ResGatedGraphConv(16, 16), heads=2).double()
    ours = GSMConv(16, ResGatedGraphConv(16, 16), Attention(16, heads=2), order="hac_dfs").double()
    ours.load_state_dict({k.replace("attn.", "branch.mixer.attn.", 1) if k.startswith("attn.") else k: v
                          for k, v in gps.state_dict().items()})
    gps.train(training), ours.train(training)
    x = torch.randn(batch.num_nodes, 16, dtype=torch.float64)
    torch.testing.assert_close(ours(x, batch.edge_index, batch.batch, hac_rank=batch.hac_rank),
                               gps(x, batch.edge_index, batch.batch))


CASES = [("hac_dfs", "mamba2"), ("hac_dfs", "attention"), ("degree", "hybrid"), ("random", "gated-deltanet"),
         ("none", "titans-lmm"), ("khop", "mamba2"), ("hac_bfs", "attention"), ("mixture", "mamba2")]


@pytest.mark.parametrize("tokenization, mixer", CASES)
@pytest.mark.parametrize("task", ["node", "graph"])
def test_batching_equals_one_at_a_time(tokenization, mixer, task):
    """Right padding never reaches a causal mixer's real outputs, attention masks it, per-node token sequences do
    not cross graphs: a batch of graphs of different sizes gives what each graph gives alone."""
    graphs = random_graphs(4, 2)
    assert len({g.num_nodes for g in graphs}) > 2
    net = model(tokenization, mixer, task)
    with torch.no_grad():
        together = net(Batch.from_data_list(graphs))
        alone = torch.cat([net(Batch.from_data_list([g])) for g in graphs])
        assert torch.allclose(net(graphs[0]), alone[:graphs[0].num_nodes] if task == "node" else alone[:1])  # a Data
    assert together.shape == (sum(g.num_nodes for g in graphs) if task == "node" else 4, 2)
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tokenization", ["hac_dfs", "degree", "khop", "hac_bfs", "mixture"])
def test_relabelling_nodes_leaves_the_graph_prediction_unchanged(tokenization):
    """With distinct features the HAC tree, its DFS rank, BFS tokens and PE, the degree order (ties by HAC rank)
    and the k-hop sets are label-invariant, so even a causal (order-sensitive) mixer gives an invariant graph
    prediction and equivariant node outputs."""
    graphs = random_graphs(3, 3)
    gen = torch.Generator().manual_seed(0)
    perms = [torch.randperm(g.num_nodes, generator=gen) for g in graphs]
    moved = [relabel(g, p) for g, p in zip(graphs, perms)]
    with torch.no_grad():
        for task in ("graph", "node"):
            net = model(tokenization, "mamba2", task)
            before, after = net(Batch.from_data_list(graphs)), net(Batch.from_data_list(moved))
            if task == "node":
                after = torch.cat([a[p] for a, p in zip(after.split([g.num_nodes for g in graphs]), perms)])
            torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_the_node_order_matters_to_a_causal_mixer():
    """The invariance above is not vacuous: in the nodes' own order a causal mixer sees the relabelling."""
    graphs = random_graphs(3, 3)
    gen = torch.Generator().manual_seed(0)
    moved = [relabel(g, torch.randperm(g.num_nodes, generator=gen)) for g in graphs]
    net = model("none", "mamba2", pe=False)
    with torch.no_grad():
        assert not torch.allclose(net(Batch.from_data_list(graphs)), net(Batch.from_data_list(moved)), atol=1e-6)


@pytest.mark.parametrize("preset", ["titans-lmm", "mamba2", "gated-deltanet", "titans-mal", "transformer++", "hope"])
def test_any_library_mixer_is_a_global_encoder(preset):
    batch = Batch.from_data_list(random_graphs(2, 4))
    torch.manual_seed(0)
    conv = GSMConv(16, mixer=preset, order="hac_dfs").double()
    x = torch.randn(batch.num_nodes, 16, dtype=torch.float64)
    out = conv(x, batch.edge_index, batch.batch, hac_rank=batch.hac_rank)
    out.square().sum().backward()
    mixer = conv.branch.mixer
    assert isinstance(mixer, MixerStack) and torch.isfinite(out).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())  # every one is used


def test_library_and_hybrid_mixers_are_built_as_documented():
    samba = library_mixer("moneta-h", 16, num_layers=2)  # memory block then sliding-window attention block
    assert [type(m.module).__name__ for m in samba.mixers] == ["MemoryMixer", "Attention"]
    hybrid = hybrid_mixer(16, heads=2)  # GSM++: two Mamba2 (SSD) layers, then attention
    assert [type(m).__name__ for m in hybrid.mixers] == ["MixerStack", "MixerStack", "Attention"]
    x, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    single = library_mixer("mamba2", 16)  # one mixer: exactly m(RMSNorm(x))
    assert torch.equal(single(x, mask), single.mixers[0](single.norms[0](x), mask))


def test_hac_bfs_tokens_of_a_batch_pool_as_each_tree():
    graphs = random_graphs(3, 5)
    batch = Batch.from_data_list(graphs)
    pooled = batch_tokens(batch, ["hac_bfs"], k=2)["hac_bfs"].pool(batch.x)
    for g, p in zip(graphs, pooled.split([g.num_nodes for g in graphs])):
        tree = hac_tree(g.edge_index, g.num_nodes, x=g.x)
        want = hac_bfs_tokens(tree).pool(g.x)  # [n, depth + 1]; the padded levels repeat the top
        torch.testing.assert_close(p[:, LEVELS - tree.depth - 1:], want)
        torch.testing.assert_close(p[:, :LEVELS - tree.depth - 1], want[:, :1].expand(-1, LEVELS - tree.depth - 1, -1))
    khop = batch_tokens(batch, ["khop"], k=2)["khop"].pool(batch.x)
    torch.testing.assert_close(khop[:, -1], batch.x)  # the node itself last


def test_mixture_router_keeps_two_tokenisations_per_node():
    batch = Batch.from_data_list(random_graphs(2, 6))
    conv = GSMConv(16, mixer={"hac_dfs": "mamba2", "khop": "attention", "hac_bfs": "mamba2"}, order="mixture").double()
    branch = conv.branch
    assert isinstance(branch, MixtureBranch)
    assert [type(b) for b in branch.branches.values()] == [SequenceBranch, TokenBranch, TokenBranch]
    x = torch.randn(batch.num_nodes, 16, dtype=torch.float64)
    seen = {}
    branch.proj.register_forward_pre_hook(lambda module, args: seen.update(concat=args[0]))
    out = conv(x, batch.edge_index, batch.batch, hac_rank=batch.hac_rank,
               tokens=batch_tokens(batch, ["khop", "hac_bfs"], k=2))
    slots = seen["concat"].view(batch.num_nodes, 3, 16).abs().sum(-1) > 0
    assert (slots.sum(1) == 2).all()
    out.sum().backward()
    assert branch.router.weight.grad.abs().sum() > 0


def test_baselines_batch_and_count_parameters():
    graphs = random_graphs(3, 7)
    for build in (gps_baseline, gatedgcn_baseline):
        torch.manual_seed(0)
        net = build(FEATURES, 16, 2, 2, heads=2).double().eval() if build is gps_baseline else \
            build(FEATURES, 16, 2, 2).double().eval()
        with torch.no_grad():
            torch.testing.assert_close(net(Batch.from_data_list(graphs)),
                                       torch.cat([net(Batch.from_data_list([g])) for g in graphs]))
    assert any(isinstance(m, GPSConv) for m in gps_baseline(FEATURES, 16, 2, 1).modules())
    assert count_parameters(nn.Linear(3, 4)) == 16


def test_gsm_plus_plus_learns_a_synthetic_task():
    """GSM++ as the paper builds it (HAC-DFS, hybrid block, hierarchical PE) fits colour counting."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([with_hac(g) for g in graph_task("color_count", 16, num_nodes=(8, 16), seed=0)])
    net = GSMModel(3, 16, 3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = nn.functional.mse_loss(net(batch), batch.y.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


class IdentityMixer(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("call, message", [
    (lambda: GSMConv(0), "channels must be a positive integer"),
    (lambda: GSMConv(16, conv="gcn"), "conv must be 'gatedgcn'"),
    (lambda: GSMConv(16, dropout=1.0), "dropout must lie in [0, 1)"),
    (lambda: GSMConv(16, order="bfs"), "unknown order 'bfs'"),
    (lambda: GSMConv(16, mixer="lstm"), "unknown mixer 'lstm'"),
    (lambda: GSMConv(16, mixer=3), "unknown mixer 3"),
    (lambda: GSMConv(16, mixer="attention", heads=3), "attention heads must be >= 1 and divide channels=16"),
    (lambda: GSMConv(16, order="mixture"), "order 'mixture' needs mixer={tokenisation: mixer}"),
    (lambda: GSMConv(16, mixer={"khop": "attention"}, order="mixture"), "at least 2 tokenisations"),
    (lambda: hybrid_mixer(16, ssm_layers=0), "ssm_layers must be >= 1"),
    (lambda: library_mixer("mamba", 16), "unknown preset 'mamba'"),
    (lambda: GSMModel(3, 16, 2, 2, "bfs"), "unknown tokenization 'bfs'"),
    (lambda: GSMModel(3, 16, 2, 2, task="edge"), "task must be one of node, graph"),
    (lambda: GSMModel(3, 16, 2, 0), "layers must be a positive integer"),
    (lambda: GSMModel(3, 16, 2, 2, mixer=IdentityMixer()), "mixer must be a name or a factory"),
    (lambda: GSMModel(3, 16, 2, 2, "mixture", mixture=("khop", "khop")), "mixture must list distinct"),
    (lambda: GSMModel(3, 16, 2, 2, "mixture", mixture=("khop", "dfs")), "mixture must list distinct"),
    (lambda: model("hac_dfs", "attention", pe=False)(Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0], [1]]))),
     "tokenization 'hac_dfs' needs data.hac_rank: apply"),
    (lambda: model("khop", "attention")(Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0], [1]]))),
     "pe=True needs data.hac_pe"),
    (lambda: model("hac_bfs", "attention", pe=False)(Data(x=torch.randn(4, 3), edge_index=torch.tensor([[0], [1]]))),
     "tokenization 'hac_bfs' needs data.hac_levels"),
    (lambda: model("khop", "attention", pe=False)(Data(x=torch.randn(4, 2), edge_index=torch.tensor([[0], [1]]))),
     "data.x must have shape [num_nodes, 3]"),
    (lambda: model("khop", "attention", pe_levels=2)(random_graphs(1, 0)[0]), "more than pe_levels=2"),
    (lambda: GSMConv(16, mixer="attention", order="hac_dfs")(torch.randn(4, 16), torch.tensor([[0], [1]])),
     "order 'hac_dfs' needs hac_rank"),
    (lambda: GSMConv(16, mixer="attention", order="khop")(torch.randn(4, 16), torch.tensor([[0], [1]])),
     "tokenisation 'khop' needs tokens="),
])
def test_bad_arguments_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_plain_causal_module_is_a_mixer():
    conv = GSMConv(16, mixer=IdentityMixer(), order="degree").double()
    x = torch.randn(5, 16, dtype=torch.float64)
    assert conv(x, torch.tensor([[0, 1], [1, 0]])).shape == (5, 16)


@pytest.mark.parametrize("name", ["gsm++", "gps", "gatedgcn"])
def test_build_model_by_name_rebuilds_and_graph_layer_norm_batches(name):
    """``build_model(**model.config)`` rebuilds the model; PyG's graph-mode layer norm gets each layer's ``batch``
    (GatedGCN's included), so a batch still equals its graphs one at a time; ``conv=None`` drops the local MPNN."""
    from nestedmemory.graphs.models import build_model

    torch.manual_seed(0)
    net = build_model(name, FEATURES, 16, 2, 2, mixer="mamba2", norm="layer_norm", pe_levels=LEVELS - 1).double()
    twin = build_model(**net.config).double()
    assert [p.shape for p in twin.parameters()] == [p.shape for p in net.parameters()]
    graphs = random_graphs(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(Batch.from_data_list(graphs)),
                                   torch.cat([net(Batch.from_data_list([g])) for g in graphs]))
    if name == "gsm++":
        alone = build_model(name, FEATURES, 16, 2, 2, conv=None, pe_levels=LEVELS - 1)
        assert all(layer.conv is None for layer in alone.layers)
        assert count_parameters(alone) < count_parameters(build_model(name, FEATURES, 16, 2, 2, pe_levels=LEVELS - 1))
