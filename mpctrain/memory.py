"""Process memory settings for roles that pass multi-megabyte messages all day (aggregator, party agent).

glibc serves a multi-megabyte ``malloc`` from fresh ``mmap`` pages, or trims the heap as soon as such a
block is freed, so every message of a model update costs about a thousand page faults (zero-filled by the
kernel) per 4 MB buffer, each time. A federated round allocates several such buffers per party (Flower's
protobuf copies, the sealed frames, the opened arrays): measured in ``scripts/bench_federated.py``, the
faults alone were a tenth of a round. Keeping freed blocks in the heap reuses warm pages instead; the
price is that a process keeps up to ``trim_threshold`` of freed memory instead of returning it at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold (64-bit)
TRIM_THRESHOLD = 256 << 20

_applied: bool | None = None


def keep_freed_memory(*, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Ask glibc to serve blocks below ``mmap_threshold`` from the heap and keep up to ``trim_threshold``
    of freed heap. Idempotent; returns whether it took effect (``False`` off glibc, e.g. macOS or musl)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return _applied
