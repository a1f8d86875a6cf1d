"""GSM++'s graph tasks as training problems (Behrouz et al., ICML 2025, arXiv 2411.15671, Tables 1–2): the data
sets, with GSM++'s HAC tokenisation precomputed once per graph, and for each task what a model predicts, its loss
and its scores.

* the six synthetic tasks of :mod:`nestedmemory.graphs.synthetic` under short names (:data:`SYNTHETIC`):
  ``degree`` (node-level classes), ``cycle`` and ``connectivity`` (graph-level classes), ``triangles`` and
  ``shortest_path`` (graph-level regression), ``colors`` (one count per colour, regression); each split drawn from
  its own seed;
* ``karate``: Zachary's karate club (networkx ``karate_club_graph``), the club of each member from one-hot node
  ids; a stratified split of the nodes, transductive (every split is the one graph, ``data.mask`` selecting the
  nodes it scores).

Regression targets are standardised with the training split's mean and standard deviation (``GraphTask.shift``,
``scale``); the scores are on the original scale: ``rmse``, and ``accuracy`` of the prediction rounded to the
nearest integer (for ``colors`` the share of (graph, colour) counts exactly right, the paper's colour-counting
accuracy). Needs ``networkx`` and ``torch_geometric``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from .synthetic import graph_task
from .transforms import AddHACOrder

__all__ = ["GraphTask", "SYNTHETIC", "TASKS", "make_task", "hac_levels"]

#: short task name -> name in :func:`~nestedmemory.graphs.synthetic.graph_task`.
SYNTHETIC = {"degree": "node_degree", "cycle": "cycle_check", "triangles": "triangle_count",
             "connectivity": "connectivity", "colors": "color_count", "shortest_path": "shortest_path"}
TASKS = (*SYNTHETIC, "karate")
#: (level, kind) of each task.
KINDS = {"degree": ("node", "classify"), "cycle": ("graph", "classify"), "triangles": ("graph", "regress"),
         "connectivity": ("graph", "classify"), "colors": ("graph", "regress"),
         "shortest_path": ("graph", "regress"), "karate": ("node", "classify")}
SPLITS = ("train", "val", "test")
#: karate: share of each club's members in the training and validation splits (the rest is the test split).
KARATE_SPLIT = (0.5, 0.25)


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


def _karate(seed: int) -> dict[str, list[Data]]:
    """The karate club, its nodes split per club (:data:`KARATE_SPLIT`) by ``seed``."""
    graph = nx.karate_club_graph()
    n = graph.number_of_nodes()
    y = torch.tensor([int(graph.nodes[v]["club"] != "Mr. Hi") for v in range(n)])
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).T
    edge_index = torch.cat([edges, edges.flip(0)], 1)
    rng = np.random.default_rng(seed)
    split = np.empty(n, dtype=np.int64)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(y.numpy() == label))
        bounds = np.round(np.cumsum(KARATE_SPLIT) * members.size).astype(int)
        for index, part in enumerate(np.split(members, bounds)):
            split[part] = index
    return {name: [Data(x=torch.eye(n), edge_index=edge_index, y=y, num_nodes=n,
                        mask=torch.from_numpy(split == index))] for index, name in enumerate(SPLITS)}


def make_task(name: str, sizes: dict[str, int] | None = None, *, num_nodes: tuple[int, int] = (8, 24),
              num_colors: int = 3, seed: int = 0) -> tuple[GraphTask, dict[str, list[Data]]]:
    """Task ``name`` (:data:`TASKS`) and its splits ``{"train", "val", "test"}``: lists of PyG ``Data`` with the HAC
    fields (``hac_rank``, ``hac_levels``, ``hac_pe``) of one ``AddHACOrder``.

    Synthetic tasks: ``sizes`` graphs per split (default 256 / 64 / 256) of ``num_nodes`` (an inclusive range)
    nodes, split ``i`` from seed ``3 * seed + i``; ``degree``'s classes are the degrees seen in any split. Karate:
    one graph, ``seed`` splits its nodes. Raises ``ValueError`` for an unknown name or bad sizes."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    if name == "karate":
        splits = _karate(seed)
    else:
        sizes = {"train": 256, "val": 64, "test": 256, **(sizes or {})}
        splits = {split: graph_task(SYNTHETIC[name], sizes[split], num_nodes=num_nodes, num_colors=num_colors,
                                    seed=3 * seed + index) for index, split in enumerate(SPLITS)}
    levels = hac_levels(max(g.num_nodes for graphs in splits.values() for g in graphs))
    transform = AddHACOrder(num_levels=levels)
    splits = {split: [transform(g) for g in graphs] for split, graphs in splits.items()}
    level, kind = KINDS[name]
    if kind == "classify":
        outputs = 1 + max(int(g.y.max()) for graphs in splits.values() for g in graphs)
        return GraphTask(name, level, kind, outputs, levels), splits
    values = torch.cat([g.y.double().flatten() for g in splits["train"]])  # regression tasks are graph-level
    outputs = splits["train"][0].y.shape[-1] if name == "colors" else 1
    scale = values.std().item() if values.numel() > 1 else 1.0
    return GraphTask(name, level, kind, outputs, levels, values.mean().item(), scale if scale > 0 else 1.0), splits
