"""Test-session setup: the CPU settings every long memory run uses (flushed denormals, non-fragmenting heap), and
one thread per test process: the models under test are tiny, and two xdist workers × two OpenMP threads on two
cores slowed steps up to 100× (measured)."""

import torch

from nestedmemory.runtime import configure_cpu

configure_cpu()
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The slow tests first (stable order otherwise): with xdist's work stealing the two workers then finish
    together instead of one running the long tests at the end while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
