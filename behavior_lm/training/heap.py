"""Keep freed memory in the process heap (glibc), so that large tensors stop page-faulting.

PyTorch's CPU allocator has no cache: every tensor is ``malloc``'d and ``free``'d. glibc serves a
request above its mmap threshold (adaptive, at most 32 MiB on 64-bit) with a fresh ``mmap`` and
unmaps it on ``free``; the next tensor of that size is a new mapping that the kernel faults in and
zeroes page by page. A training step of the ML-1M recipes allocates its attention matrices
(batch x heads x 200 x 200 floats, 20-41 MB each, several per layer in forward and backward) this
way: the Llama recipe with 4 blocks took ~80,000 minor page faults per second of training.

:func:`keep_freed_memory` tells glibc to serve every request from the heap (``M_MMAP_MAX = 0``)
and to keep what is freed there (``M_TRIM_THRESHOLD`` at its maximum), so a step reuses the pages
of the step before. The cost is that the heap does not shrink: peak RSS stays at the high-water
mark, which a training process reaches in its first step anyway. Nothing else changes (no
numerics, no saved state). On non-glibc platforms (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied = False


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version                     # glibc only; musl has no such symbol
        libc.mallopt
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Serve all allocations from the heap and never trim it; True when applied (glibc).

    Process-wide and idempotent; called by the Trainer of a CPU run (``keep_freed_memory: true``).
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX))
    return _applied
