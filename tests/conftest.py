"""Test-session setup: the CPU settings every long memory run uses (flushed denormals, non-fragmenting heap), and
one thread per xdist worker (two workers × two OpenMP threads on two cores slowed steps up to 100×, measured)."""

import os

import torch

from nestedmemory.runtime import configure_cpu

configure_cpu()
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
