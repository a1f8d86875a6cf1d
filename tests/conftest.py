"""Test-session setup: the CPU settings every long memory run uses (flushed denormals, non-fragmenting heap), and
one thread per test process: the models under test are tiny, and two xdist workers × two OpenMP threads on two
cores slowed steps up to 100× (measured)."""

import torch

from nestedmemory.runtime import configure_cpu

configure_cpu()
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The slow tests first in each half of the collection (stable order otherwise): xdist's work stealing hands
    each worker one contiguous half to start with, so every worker begins with half of the slow tests, and the
    fast ones are left to balance the end (with all of them in the first half, one worker ran them in a row while
    the other finished its fast half and stole from the back of the queue)."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    first = slow[0::2] + fast[:max(len(items) // 2 - len(slow[0::2]), 0)]
    items[:] = first + slow[1::2] + fast[len(first) - len(slow[0::2]):]
