"""glibc malloc settings for a process that is only a detector.

A detector allocates and frees tens of MB per batch: kafka-python's receive
buffers and the ~2,000 record values of a poll (~10 kB each), the poll's
frame buffer, the windowing arrays. With glibc's defaults the freed heap is
trimmed back to the system as soon as more than 128 kB of it is free at the
top (buffers above the mmap threshold are unmapped on free), so the next
batch page-faults on every 4 KiB page again: on 5 M frames of uncompressed
binary records, ~70,000 faults and 0.13 of a bare consumer's 0.44 CPU-s,
mostly in the kernel. Kept in the heap, the same memory faults in once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc's largest mmap threshold on 64-bit: buffers up to this come from the heap
MMAP_THRESHOLD_BYTES = 32 << 20
#: free memory the heap keeps before returning it to the system: one more batch
TRIM_THRESHOLD_BYTES = 64 << 20


def keep_large_buffers(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Serve allocations below ``mmap_threshold`` from the heap, and keep up to
    ``trim_threshold`` of freed heap for the next ones. Returns False (and
    changes nothing) where the C library has no glibc ``mallopt``."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if not ok:
        log.debug("mallopt refused the thresholds; glibc's defaults stay")
    return ok
