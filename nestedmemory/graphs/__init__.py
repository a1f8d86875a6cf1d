"""GSM++ graph sequence models (Behrouz et al., ICML 2025, arXiv 2411.15671): graph → sequence tokenisers.

* :mod:`.hac`: the hierarchical affinity clustering tree (Borůvka rounds of affinity clustering);
* :mod:`.tokenize`: node orders (degree, random, HAC-DFS), per-node token sequences (k-hop, HAC-BFS) and the
  hierarchical positional encoding;
* :mod:`.synthetic` (needs ``networkx``): the paper's synthetic local / global tasks, on random families (forests for
  long-range connectivity) or the graph atlas;
* :mod:`.datasets` (needs ``networkx`` and ``torch_geometric``): karate, Les Misérables, PyG datasets from a path;
* :mod:`.tasks` (needs ``networkx`` and ``torch_geometric``): all of them as training problems (data sets with the
  HAC fields, losses, scores);
* :mod:`.transforms` (needs ``torch_geometric``): PyG transforms (``AddHACOrder``);
* :mod:`.mixers`: the global sequence mixers (GPS attention, any preset's mixer, GSM++'s hybrid SSM + attention);
* :mod:`.branches`, :mod:`.conv`, :mod:`.models` (need ``torch_geometric``): tokenise → mix → back to nodes,
  ``GSMConv`` (``GPSConv``'s layout and calling convention), ``GSMModel`` and the GPS / GatedGCN baselines.

``synthetic``, ``datasets``, ``transforms`` and ``tasks`` need optional dependencies: import them explicitly. The
layers and models load on first use of their names here (``from nestedmemory.graphs import GSMConv``), so importing
this package needs numpy and torch only.
"""

from .hac import HACTree, edge_affinity, hac_tree
from .tokenize import (
    TokenSets, cluster_distances, degree_order, hac_bfs_tokens, hac_dfs_order, hierarchical_pe, khop_tokens,
    random_order,
)

__all__ = [
    "HACTree", "edge_affinity", "hac_tree",
    "TokenSets", "cluster_distances", "degree_order", "hac_bfs_tokens", "hac_dfs_order", "hierarchical_pe",
    "khop_tokens", "random_order",
]

#: names loaded on first use (PyG is optional), so not in ``__all__``: name -> submodule.
LAZY = {
    "GSMConv": "conv",
    "GSMModel": "models", "batch_tokens": "models", "build_model": "models", "count_parameters": "models",
    "gatedgcn_baseline": "models", "gps_baseline": "models",
    "Attention": "mixers", "SequenceMixer": "mixers", "hybrid_mixer": "mixers", "library_mixer": "mixers",
    "make_mixer": "mixers",
}


def __getattr__(name):
    if name in LAZY:
        from importlib import import_module

        return getattr(import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
