"""glibc malloc settings for a process that is only a detector.

A detector allocates and frees tens of MB per batch: kafka-python's receive
buffers and the ~2,000 record values of a poll (~10 kB each), the poll's
frame buffer, the windowing arrays. glibc returns freed memory at the top of
its heap to the system once more than its trim threshold is free (128 kB
until it raises it itself, which the pattern above does not reliably make it
do), and unmaps buffers above its mmap threshold on free, so the next batch
page-faults on the same memory again: on 5 M frames of plain binary records,
~70,000 faults and 0.13 of a bare consumer's 0.44 CPU-s, mostly in the
kernel. With fixed, larger thresholds the same memory faults in once.
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
#: free memory at the top of a heap before it goes back to the system: a batch's worth
TRIM_THRESHOLD_BYTES = 64 << 20


def keep_large_buffers(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Serve allocations below ``mmap_threshold`` from the heap, and trim the heap
    only once more than ``trim_threshold`` of it is free (per arena: not a cap on
    what the process keeps). Returns whether both are set; where the C library
    has no glibc ``mallopt`` (musl, macOS) or refuses the first, nothing changes."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, mmap_threshold) != 1:  # e.g. above a 32-bit glibc's maximum
        log.debug("mallopt refused an mmap threshold of %d; glibc's defaults stay", mmap_threshold)
        return False
    if mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1:
        log.debug("mallopt refused a trim threshold of %d", trim_threshold)
        return False
    return True
