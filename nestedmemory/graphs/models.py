"""Graph sequence models for node- and graph-level tasks (GSM++, Behrouz et al., ICML 2025, arXiv 2411.15671) and
the baselines they are compared with, all with ``forward(data)`` on a PyG ``Data`` / ``Batch``:

* :class:`GSMModel`: node encoder (+ GSM++'s hierarchical PE), a stack of :class:`~nestedmemory.graphs.GSMConv`
  in one tokenisation (or the mixture of tokenisations), mean-pool readout for graph tasks, MLP head;
* :func:`gps_baseline`: the same encoder and head around PyG's own ``GPSConv`` (Rampášek et al., NeurIPS 2022);
* :func:`gatedgcn_baseline`: a plain GatedGCN (PyG's ``ResGatedGraphConv``) stack;
* :func:`build_model`: any of them by name, rebuildable from ``model.config``;
* :func:`count_parameters`, to compare them at matched size.

Importing this module needs ``torch_geometric``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch_geometric.nn import GPSConv, ResGatedGraphConv, global_mean_pool
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from .branches import TOKEN_SETS, TOKENIZATIONS
from .conv import GSMConv
from .tokenize import POOLS, TokenSets, khop_tokens

__all__ = ["GSMModel", "GraphNetwork", "NodeEncoder", "GatedGCNLayer", "batch_tokens", "gps_baseline",
           "gatedgcn_baseline", "build_model", "count_parameters", "MIXTURE", "MODELS", "TASKS"]

#: prediction targets: one output per node, or per graph (mean pooling of the nodes).
TASKS = ("node", "graph")
#: the tokenisations of ``tokenization="mixture"`` (GSM++'s MoT; Tables 1-2's tokenisations but ``node``).
MIXTURE = ("hac_dfs", "khop", "hac_bfs")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _field(data, name: str, why: str) -> torch.Tensor:
    value = getattr(data, name, None)
    if value is None:
        raise ValueError(f"{why} needs data.{name}: apply nestedmemory.graphs.transforms.AddHACOrder(num_levels=...)")
    return value


def batch_tokens(data, names, k: int, pool: str = "mean") -> dict[str, TokenSets]:
    """The per-node token sequences of a batch, coarse to fine with the node's own token last (a
    :class:`~nestedmemory.graphs.branches.TokenBranch` reads the last position), each token the ``pool`` (mean or
    sum) of its members:

    * ``"khop"``: :func:`~nestedmemory.graphs.khop_tokens` (cumulative, hops ``k, …, 1, 0``) on the batch's
      disjoint union, which is each graph's on its own;
    * ``"hac_bfs"``: the node's HAC clusters from ``data.hac_levels`` (top level first), numbered per graph, level and
      cluster, i.e. :func:`~nestedmemory.graphs.hac_bfs_tokens` of each graph, with the levels that
      :class:`~nestedmemory.graphs.transforms.AddHACOrder` pads shallow trees with.
    """
    x, out = data.x, {}
    n = x.shape[0]
    if "khop" in names:
        hop = khop_tokens(data.edge_index, n, k)
        out["khop"] = TokenSets(hop.seq.flip(1).to(x.device), hop.members.to(x.device), hop.num_tokens, pool)
    if "hac_bfs" in names:
        levels = _field(data, "hac_levels", "tokenization 'hac_bfs'")
        batch = data.batch if data.batch is not None else torch.zeros_like(levels[:, 0])
        depth = levels.shape[1]
        key = (batch[:, None] * depth + torch.arange(depth, device=levels.device)) * n + levels
        ids, token = torch.unique(key, return_inverse=True)
        pairs = torch.unique(token * n + torch.arange(n, device=levels.device)[:, None])  # padded levels repeat
        members = torch.stack([pairs // n, pairs % n])
        out["hac_bfs"] = TokenSets(token.flip(1), members, ids.numel(), pool)
    return out


class NodeEncoder(nn.Module):
    """``x W + b`` of the input features, plus (``pe``) GSM++'s hierarchical positional encoding: ``data.hac_pe``
    ``[N, L]`` (:func:`~nestedmemory.graphs.hierarchical_pe`, per tree level the distance to the parent cluster's
    anchor) clipped at ``max_distance``, one learned embedding per (level, distance), summed over the levels.
    ``pe_levels`` bounds ``L`` (the transform's ``num_levels - 1``)."""

    def __init__(self, in_channels: int, hidden: int, pe: bool, pe_levels: int = 16, max_distance: int = 16):
        super().__init__()
        _positive("in_channels", in_channels)
        _positive("pe_levels", pe_levels)
        _positive("max_distance", max_distance)
        self.in_channels, self.pe_levels, self.max_distance = in_channels, pe_levels, max_distance
        self.linear = nn.Linear(in_channels, hidden)
        self.pe = nn.Embedding(pe_levels * (max_distance + 1), hidden) if pe else None

    def forward(self, data) -> torch.Tensor:
        x = data.x
        if x is None or x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"data.x must have shape [num_nodes, {self.in_channels}], got "
                             f"{None if x is None else tuple(x.shape)}")
        out = self.linear(x.to(self.linear.weight.dtype))
        if self.pe is None:
            return out
        pe = _field(data, "hac_pe", "pe=True")
        if pe.shape[1] > self.pe_levels:
            raise ValueError(f"data.hac_pe has {pe.shape[1]} levels, more than pe_levels={self.pe_levels}")
        level = torch.arange(pe.shape[1], device=pe.device) * (self.max_distance + 1)
        return out + self.pe(level + pe.clamp(0, self.max_distance)).sum(1)


class GraphNetwork(nn.Module):
    """``encoder(data)`` → ``layer(x, edge_index, batch, **layer_inputs(data))`` for each layer → per node
    (``task="node"``) or mean-pooled per graph (``"graph"``) → MLP head (``Linear, ReLU, Linear``)."""

    def __init__(self, encoder: NodeEncoder, layers: list[nn.Module], hidden: int, out_channels: int, task: str):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        _positive("out_channels", out_channels)
        self.task, self.encoder, self.layers = task, encoder, nn.ModuleList(layers)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))

    def layer_inputs(self, data) -> dict:
        """Keyword inputs every layer gets besides ``(x, edge_index, batch)``."""
        return {}

    def forward(self, data) -> torch.Tensor:
        """``[num_nodes, out_channels]`` for node tasks, ``[num_graphs, out_channels]`` for graph tasks."""
        x, inputs = self.encoder(data), self.layer_inputs(data)
        for layer in self.layers:
            x = layer(x, data.edge_index, data.batch, **inputs)
        if self.task == "graph":
            batch = data.batch if data.batch is not None else torch.zeros(x.shape[0], dtype=torch.long,
                                                                         device=x.device)
            x = global_mean_pool(x, batch, size=getattr(data, "num_graphs", 1))
        return self.head(x)


class GSMModel(GraphNetwork):
    """A graph sequence model (GSM++ §3, §5): :class:`NodeEncoder` (with ``pe``: the hierarchical PE), ``layers``
    :class:`~nestedmemory.graphs.GSMConv` (GatedGCN local branch, global ``mixer`` over ``tokenization``), readout,
    head. GSM++ itself is ``tokenization="hac_dfs"`` (or ``"mixture"``), ``mixer="hybrid"``, ``pe=True``.

    Args:
        tokenization: an order (``"hac_dfs"``, ``"degree"``, ``"random"``, ``"none"``): one sequence per graph; token
            sets (``"khop"``, ``"hac_bfs"``): one sequence per node, the node reads the last position; or
            ``"mixture"``: GSM++'s router over ``mixture``, top 2 per node.
        mixer: a :func:`~nestedmemory.graphs.mixers.make_mixer` spec (``"hybrid"``, ``"attention"``, a preset name, a
            factory ``channels → module``); every layer and tokenisation gets its own.
        task: ``"node"`` or ``"graph"``.
        pe: add the hierarchical PE (needs ``data.hac_pe``).
        k: hops of the ``"khop"`` tokens.
        pool: how a ``"khop"`` / ``"hac_bfs"`` token encodes its nodes: ``"mean"`` (GSM++'s reading) or ``"sum"``
            (the token also carries its size).
        heads, dropout, norm: of the layers (:class:`~nestedmemory.graphs.GSMConv`).
        conv: every layer's local MPNN, ``"gatedgcn"`` or ``None``: the global branch alone, so that the tokenisation
            is the only way the graph's structure reaches the model (the setting of GSM++'s Tables 1-2, where node
            tokens score at chance on node degree).
        pe_levels, max_distance: of the PE (:class:`NodeEncoder`).

    ``forward(data)`` needs ``data.x``, ``data.edge_index``, ``data.batch`` for a ``Batch``, and what the
    tokenisation reads: ``data.hac_rank`` (``"hac_dfs"``; the degree order also breaks ties by it when present) and
    ``data.hac_levels`` (``"hac_bfs"``), from :class:`~nestedmemory.graphs.transforms.AddHACOrder` with a fixed
    ``num_levels`` so that graphs batch.
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int, tokenization: str = "hac_dfs",
                 mixer="hybrid", task: str = "graph", pe: bool = True, *, k: int = 2, pool: str = "mean",
                 mixture=MIXTURE, heads: int = 1, dropout: float = 0.0, norm: str | None = "batch_norm",
                 pe_levels: int = 16, max_distance: int = 16, conv: str | None = "gatedgcn"):
        _positive("hidden", hidden)
        _positive("layers", layers)
        _positive("k", k)
        if pool not in POOLS:
            raise ValueError(f"unknown token pooling {pool!r}: choose one of {', '.join(POOLS)}")
        if isinstance(mixer, nn.Module):
            raise ValueError("GSMModel's mixer must be a name or a factory channels -> module (every layer builds its "
                             "own), not a module")
        if tokenization == "mixture":
            unknown = [t for t in mixture if t not in TOKENIZATIONS]
            if unknown or len(set(mixture)) != len(mixture):
                raise ValueError(f"mixture must list distinct tokenisations of {', '.join(TOKENIZATIONS)}, got "
                                 f"{list(mixture)}")
            names, spec = tuple(mixture), {t: mixer for t in mixture}
        elif tokenization in TOKENIZATIONS:
            names, spec = (tokenization,), mixer
        else:
            raise ValueError(f"unknown tokenization {tokenization!r}: choose one of {', '.join(TOKENIZATIONS)}, "
                             f"mixture")
        convs = [GSMConv(hidden, conv, spec, tokenization, heads=heads, dropout=dropout, norm=norm)
                 for _ in range(layers)]
        super().__init__(NodeEncoder(in_channels, hidden, pe, pe_levels, max_distance), convs, hidden, out_channels,
                         task)
        self.tokenizations, self.k, self.pool = names, k, pool

    def layer_inputs(self, data) -> dict:
        names = self.tokenizations
        inputs = {"tokens": batch_tokens(data, [t for t in names if t in TOKEN_SETS], self.k, self.pool)}
        if "hac_dfs" in names:
            inputs["hac_rank"] = _field(data, "hac_rank", "tokenization 'hac_dfs'")
        elif "degree" in names:
            inputs["hac_rank"] = getattr(data, "hac_rank", None)
        return inputs


class GatedGCNLayer(nn.Module):
    """A residual GatedGCN layer as in GraphGPS: ``x + dropout(act(norm(ResGatedGraphConv(x))))``; a norm that takes
    ``batch`` (PyG's graph-mode ``LayerNorm``, ``GraphNorm``, …) gets it, as in ``GPSConv``."""

    def __init__(self, channels: int, dropout: float = 0.0, act: str = "relu", norm: str | None = "batch_norm"):
        super().__init__()
        self.conv = ResGatedGraphConv(channels, channels)
        self.norm = normalization_resolver(norm, channels)
        self.norm_with_batch = self.norm is not None and "batch" in inspect.signature(self.norm.forward).parameters
        self.act, self.dropout = activation_resolver(act), nn.Dropout(dropout)

    def forward(self, x, edge_index, batch=None, **kwargs):
        h = self.conv(x, edge_index, **kwargs)
        if self.norm is not None:
            h = self.norm(h, batch=batch) if self.norm_with_batch else self.norm(h)
        return x + self.dropout(self.act(h))


def gps_baseline(in_channels: int, hidden: int, out_channels: int, layers: int, task: str = "graph",
                 pe: bool = False, *, heads: int = 1, dropout: float = 0.0, norm: str | None = "batch_norm",
                 pe_levels: int = 16, max_distance: int = 16) -> GraphNetwork:
    """GPS (Rampášek et al. 2022) as PyG ships it: ``layers`` ``GPSConv(hidden, ResGatedGraphConv, heads)`` (global
    multi-head attention, no positions) between the same encoder and head as :class:`GSMModel`."""
    _positive("hidden", hidden)
    _positive("layers", layers)
    convs = [GPSConv(hidden, ResGatedGraphConv(hidden, hidden), heads=heads, dropout=dropout, norm=norm)
             for _ in range(layers)]
    return GraphNetwork(NodeEncoder(in_channels, hidden, pe, pe_levels, max_distance), convs, hidden, out_channels,
                        task)


def gatedgcn_baseline(in_channels: int, hidden: int, out_channels: int, layers: int, task: str = "graph",
                      pe: bool = False, *, dropout: float = 0.0, norm: str | None = "batch_norm",
                      pe_levels: int = 16, max_distance: int = 16) -> GraphNetwork:
    """A plain message-passing baseline: ``layers`` :class:`GatedGCNLayer` between the same encoder and head as
    :class:`GSMModel`."""
    _positive("hidden", hidden)
    _positive("layers", layers)
    convs = [GatedGCNLayer(hidden, dropout, norm=norm) for _ in range(layers)]
    return GraphNetwork(NodeEncoder(in_channels, hidden, pe, pe_levels, max_distance), convs, hidden, out_channels,
                        task)


#: the models of :func:`build_model`.
MODELS = ("gsm++", "gps", "gatedgcn")


def build_model(name: str, in_channels: int, hidden: int, out_channels: int, layers: int, task: str = "graph", *,
                tokenization: str = "hac_dfs", mixer: str = "hybrid", pe: bool = True, conv: str | None = "gatedgcn",
                heads: int = 1, norm: str | None = "batch_norm", pe_levels: int = 16,
                pool: str = "mean") -> GraphNetwork:
    """Model ``name`` of :data:`MODELS` by its settings: ``"gsm++"`` a :class:`GSMModel` (``tokenization``,
    ``mixer``, ``conv``, ``pool``: GSM++ itself with the defaults), ``"gps"`` :func:`gps_baseline`, ``"gatedgcn"``
    :func:`gatedgcn_baseline`, each with the hierarchical PE if ``pe``. ``model.config`` holds the arguments, so
    ``build_model(**model.config)`` rebuilds it (the weights aside)."""
    config = dict(name=name, in_channels=in_channels, hidden=hidden, out_channels=out_channels, layers=layers,
                  task=task, tokenization=tokenization, mixer=mixer, pe=pe, conv=conv, heads=heads, norm=norm,
                  pe_levels=pe_levels, pool=pool)
    common = dict(heads=heads, norm=norm, pe_levels=pe_levels)
    if name == "gsm++":
        model = GSMModel(in_channels, hidden, out_channels, layers, tokenization, mixer, task, pe, conv=conv,
                         pool=pool, **common)
    elif name == "gps":
        model = gps_baseline(in_channels, hidden, out_channels, layers, task, pe, **common)
    elif name == "gatedgcn":
        model = gatedgcn_baseline(in_channels, hidden, out_channels, layers, task, pe, norm=norm, pe_levels=pe_levels)
    else:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    model.config = config
    return model


def count_parameters(model: nn.Module) -> int:
    """The number of parameters of ``model`` (every one, trainable or not)."""
    return sum(p.numel() for p in model.parameters())
