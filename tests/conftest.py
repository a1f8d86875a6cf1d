"""Test-session setup: the CPU settings every long memory run uses (flushed denormals, non-fragmenting heap)."""

from nestedmemory.runtime import configure_cpu

configure_cpu()
