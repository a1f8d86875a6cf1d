"""GSM++'s graph tasks as training problems (Behrouz et al., ICML 2025, arXiv 2411.15671, Tables 1–2): the data
sets, with GSM++'s HAC tokenisation precomputed once per graph, and for each task what a model predicts, its loss
and its scores.

* the six synthetic tasks of :mod:`nestedmemory.graphs.synthetic` under short names (:data:`SYNTHETIC`):
  ``degree`` (node-level classes), ``cycle`` and ``connectivity`` (graph-level classes), ``triangles`` and
  ``shortest_path`` (graph-level regression), ``colors`` (one count per colour, regression); each split drawn from
  its own seed;
* ``karate`` (the club of each member) and ``lesmis`` (each character's Louvain community): one-graph node
  classification from one-hot node ids on graphs that ship in networkx, a stratified split of the nodes,
  transductive (every split is the one graph, ``data.mask`` selecting the nodes it scores;
  :mod:`nestedmemory.graphs.datasets`);
* ``pyg``: a PyG dataset from a user path (``data``): node- or graph-level, classification or regression as its
  targets say.

Regression targets are standardised with the training split's mean and standard deviation (``GraphTask.shift``,
``scale``); the scores are on the original scale: ``rmse``, and ``accuracy`` of the prediction rounded to the
nearest integer (for ``colors`` the share of (graph, colour) counts exactly right, the paper's colour-counting
accuracy). Needs ``networkx`` and ``torch_geometric``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from .datasets import SPLITS, graph_splits, karate, les_miserables, node_splits, read_pyg
from .synthetic import graph_task
from .transforms import AddHACOrder

__all__ = ["GraphTask", "SYNTHETIC", "TASKS", "make_task", "hac_levels"]

#: short task name -> name in :func:`~nestedmemory.graphs.synthetic.graph_task`.
SYNTHETIC = {"degree": "node_degree", "cycle": "cycle_check", "triangles": "triangle_count",
             "connectivity": "connectivity", "colors": "color_count", "shortest_path": "shortest_path"}
#: one-graph node classification tasks on graphs that ship in networkx (:mod:`nestedmemory.graphs.datasets`).
NAMED_GRAPHS = {"karate": karate, "lesmis": les_miserables}
TASKS = (*SYNTHETIC, *NAMED_GRAPHS, "pyg")
#: (level, kind) of each task.
KINDS = {"degree": ("node", "classify"), "cycle": ("graph", "classify"), "triangles": ("graph", "regress"),
         "connectivity": ("graph", "classify"), "colors": ("graph", "regress"),
         "shortest_path": ("graph", "regress"), "karate": ("node", "classify"), "lesmis": ("node", "classify")}


@dataclass(frozen=True)
class GraphTask:
    """What a model of task ``name`` predicts: ``outputs`` values per node (``level="node"``) or per graph, class
    logits (``kind="classify"``) or standardised targets (``"regress"``: ``(y - shift) / scale``). ``levels`` is
    the ``num_levels`` of the data's :class:`~nestedmemory.graphs.transforms.AddHACOrder` (PE width ``levels - 1``).
    """

    name: str
    level: str
    kind: str
    outputs: int
    levels: int
    shift: float = 0.0
    scale: float = 1.0

    @property
    def headline(self) -> str:
        """The score the paper reports: RMSE for triangle counts and shortest paths, accuracy otherwise."""
        return "rmse" if self.kind == "regress" and self.name != "colors" else "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.headline == "accuracy"

    def select(self, out: torch.Tensor, data) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs, targets)`` of the scored nodes or graphs of a batch (``data.mask``, where present, selects
        nodes); targets are class ids, or raw values shaped as the outputs."""
        y = data.y
        mask = getattr(data, "mask", None)
        if mask is not None:
            out, y = out[mask], y[mask]
        return out, (y if self.kind == "classify" else y.to(out.dtype).view(out.shape))

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or the MSE of the standardised target."""
        if self.kind == "classify":
            return F.cross_entropy(out, target)
        return F.mse_loss(out, (target - self.shift) / self.scale)

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        """Class ids, or values on the original scale."""
        return out.argmax(-1) if self.kind == "classify" else out * self.scale + self.shift

    def scores(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``loss`` and ``accuracy`` (+ ``rmse`` for regression) of outputs against targets (module docstring)."""
        out, target = out.detach().double(), target.detach()
        prediction = self.prediction(out)
        scores = dict(loss=self.loss(out, target.to(out.dtype) if self.kind == "regress" else target).item())
        if self.kind == "classify":
            return dict(scores, accuracy=(prediction == target).double().mean().item())
        return dict(scores, accuracy=(prediction.round() == target).double().mean().item(),
                    rmse=(prediction - target).square().mean().sqrt().item())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def hac_levels(max_nodes: int) -> int:
    """``AddHACOrder``'s ``num_levels`` for graphs of at most ``max_nodes`` nodes: an HAC tree has at most
    ``ceil(log2 n)`` rounds."""
    return math.ceil(math.log2(max(max_nodes, 2))) + 1


def _pyg_task(graphs: list[Data], seed: int) -> tuple[str, str, dict[str, list[Data]]]:
    """``(level, kind, splits)`` of a user's PyG graphs: node-level when every graph has one target per node (a
    single graph with ``train_mask`` / ``val_mask`` / ``test_mask`` keeps its split, else :func:`node_splits`),
    graph-level otherwise (:func:`graph_splits`); classification when the targets are integers."""
    kind = "regress" if graphs[0].y.is_floating_point() else "classify"
    node_level = all(g.y.shape[0] == g.num_nodes for g in graphs) and any(g.num_nodes > 1 for g in graphs)
    if not node_level:
        return "graph", kind, graph_splits(graphs, seed)
    if len(graphs) > 1:
        raise ValueError("node-level targets in several graphs are not supported: give one graph (with train_mask / "
                         "val_mask / test_mask, or split by --data_seed) or graph-level targets")
    graph = graphs[0]
    if all(hasattr(graph, f"{split}_mask") for split in SPLITS):
        return "node", kind, {split: [Data(x=graph.x, edge_index=graph.edge_index, y=graph.y, num_nodes=graph.num_nodes,
                                           mask=getattr(graph, f"{split}_mask").bool())] for split in SPLITS}
    return "node", kind, node_splits(Data(x=graph.x, edge_index=graph.edge_index, y=graph.y, num_nodes=graph.num_nodes),
                                     seed)


def make_task(name: str, sizes: dict[str, int] | None = None, *, num_nodes: tuple[int, int] = (8, 24),
              num_colors: int = 3, family: str | None = None, data: str | None = None,
              seed: int = 0) -> tuple[GraphTask, dict[str, list[Data]]]:
    """Task ``name`` (:data:`TASKS`) and its splits ``{"train", "val", "test"}``: lists of PyG ``Data`` with the HAC
    fields (``hac_rank``, ``hac_levels``, ``hac_pe``) of one ``AddHACOrder``.

    Synthetic tasks: ``sizes`` graphs per split (default 256 / 64 / 256) of ``num_nodes`` (an inclusive range)
    nodes from graph ``family`` (default: the task's), split ``i`` from seed ``3 * seed + i``; ``degree``'s classes
    are the degrees seen in any split. Karate, Les Misérables: one graph, ``seed`` splits its nodes. ``pyg``: the
    graphs at path ``data`` (:func:`~nestedmemory.graphs.datasets.read_pyg`), ``seed`` splits them. Raises
    ``ValueError`` for an unknown name, bad sizes or unreadable data."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    if (name == "pyg") != (data is not None):
        raise ValueError("--data PATH goes with --task pyg (and --task pyg needs --data)")
    level, kind = KINDS.get(name, (None, None))
    if name in NAMED_GRAPHS:
        splits = NAMED_GRAPHS[name](seed)
    elif name == "pyg":
        level, kind, splits = _pyg_task(read_pyg(data), seed)
    else:
        sizes = {"train": 256, "val": 64, "test": 256, **(sizes or {})}
        splits = {split: graph_task(SYNTHETIC[name], sizes[split], family=family, num_nodes=num_nodes,
                                    num_colors=num_colors, seed=3 * seed + index)
                  for index, split in enumerate(SPLITS)}
    if not splits["train"]:
        raise ValueError(f"task {name!r}: the training split holds no graph")
    levels = hac_levels(max(g.num_nodes for graphs in splits.values() for g in graphs))
    transform = AddHACOrder(num_levels=levels)
    splits = {split: [transform(g) for g in graphs] for split, graphs in splits.items()}
    if kind == "classify":
        outputs = 1 + max(int(g.y.max()) for graphs in splits.values() for g in graphs)
        return GraphTask(name, level, kind, outputs, levels), splits
    first = splits["train"][0].y
    outputs = first.shape[-1] if first.dim() > 1 else 1
    values = torch.cat([(g.y if getattr(g, "mask", None) is None else g.y[g.mask]).double().flatten()
                        for g in splits["train"]])
    scale = values.std().item() if values.numel() > 1 else 1.0
    return GraphTask(name, level, kind, outputs, levels, values.mean().item(), scale if scale > 0 else 1.0), splits
