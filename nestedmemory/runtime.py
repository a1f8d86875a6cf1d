"""Process-level CPU settings for long memory runs: flushed denormals and an allocator that returns memory.

glibc's malloc serves allocations below its (dynamic, up to 32 MB) mmap threshold from the heap; the chunk loops of
the memory rules allocate and free many such blocks of varying size, and the heap fragments: a 2048-token Atlas
forward kept 6.7 GB resident after every tensor was freed (0.4 GB with the threshold fixed at 1 MB; measured, see
docs/decisions.md). ``configure_cpu`` fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``, the same as the
``MALLOC_MMAP_THRESHOLD_`` environment variable) and flushes denormals. The tests and the long-sequence benchmarks
call it; training does not (it only flushes denormals): the fixed threshold cost +75% CPU time per training step of
the small default model (measured), a price worth paying only for long sequences whose heap fragments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

__all__ = ["configure_cpu"]

_M_MMAP_THRESHOLD = -3


@functools.cache
def _set_mmap_threshold(nbytes: int) -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl): nothing to do
        return False


def configure_cpu(mmap_threshold: int = 1 << 20) -> bool:
    """Flush denormal floats (a diverging or decaying memory computes on them ~10× slower) and fix glibc's mmap
    threshold at ``mmap_threshold`` bytes. Returns whether the allocator setting applied."""
    torch.set_flush_denormal(True)
    return _set_mmap_threshold(mmap_threshold)
