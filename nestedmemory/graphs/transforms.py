"""PyTorch Geometric transforms computing GSM++'s HAC tokenisation once per graph (Behrouz et al., ICML 2025,
arXiv 2411.15671, §4; NEXT-WAVE.md §4.4), used the way ``AddLaplacianEigenvectorPE`` is (as a ``pre_transform`` or
``transform``). Importing this module needs ``torch_geometric``; the rest of :mod:`nestedmemory.graphs` does not.
"""

from __future__ import annotations

import torch
from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from .hac import hac_tree
from .tokenize import hac_dfs_order, hierarchical_pe

__all__ = ["AddHACOrder"]


@functional_transform("add_hac_order")
class AddHACOrder(BaseTransform):
    """Adds the HAC tree's tokenisation to a graph (functional name: ``add_hac_order``):

    * ``data.hac_rank``: ``LongTensor[num_nodes]``, each node's position in the HAC-DFS order (sort a batch by
      ``(batch, hac_rank)`` to get one sequence per graph);
    * ``data.hac_levels``: ``LongTensor[num_nodes, L]``, column ``l`` the node's cluster at level ``l`` (column 0
      the node itself, the last the connected component), numbered within the graph: pooling a batch needs a
      per-graph offset;
    * ``data.hac_pe`` (if ``pe``): ``LongTensor[num_nodes, L - 1]``, :func:`~nestedmemory.graphs.hierarchical_pe`.

    Args:
        num_levels: ``L``, fixed so that graphs of different depths batch together: levels above the tree's top
            repeat it and their PE is 0; a tree deeper than ``L - 1`` rounds raises ``ValueError`` (the depth is at
            most ``ceil(log2 num_nodes)``). ``None``: ``L = depth + 1`` of each graph.
        use_features: affinities and tie-breaks from ``data.x`` (cosine) if present, else from the structure.
        weight_attr: name of an edge attribute ``[num_edges]`` to use as affinity instead (e.g. ``"edge_weight"``).
        pe: whether to add ``hac_pe``.
    """

    def __init__(self, num_levels: int | None = None, use_features: bool = True, weight_attr: str | None = None,
                 pe: bool = True) -> None:
        if num_levels is not None and num_levels < 1:
            raise ValueError(f"num_levels must be >= 1 or None, got {num_levels}")
        self.num_levels = num_levels
        self.use_features = use_features
        self.weight_attr = weight_attr
        self.pe = pe

    def forward(self, data: Data) -> Data:
        x = data.x if self.use_features else None
        weight = None if self.weight_attr is None else data[self.weight_attr]
        tree = hac_tree(data.edge_index, data.num_nodes, x=x, edge_weight=weight)
        width = tree.depth + 1 if self.num_levels is None else self.num_levels
        if tree.depth + 1 > width:
            raise ValueError(f"HAC tree has {tree.depth + 1} levels, more than num_levels={width}")
        levels = torch.stack(tree.levels + tree.levels[-1:] * (width - tree.depth - 1), dim=1)
        data.hac_rank = hac_dfs_order(tree).argsort()
        data.hac_levels = levels
        if self.pe:
            pe = hierarchical_pe(tree)
            data.hac_pe = torch.cat([pe, pe.new_zeros(pe.shape[0], width - 1 - tree.depth)], dim=1)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_levels={self.num_levels})"
