"""The detector's malloc settings: a poll's large buffers fault their pages in once."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A detector's batch in miniature: a poll's ~2,000 record values of ~10 kB each
# (heap chunks, not mmaps), all freed together once the batch is done. The
# script prints the page faults of 10 such batches after a first one.
_BATCHES = """
import resource, sys
from detector.transport.heap import keep_large_buffers
if sys.argv[1] == "tuned":
    assert keep_large_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch():
    values = [bytearray(10_000) for _ in range(2000)]  # zero-filled: pages touched
    del values
batch()
before = faults()
for _ in range(10):
    batch()
print(faults() - before)
"""


def faults_of_10_batches(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _BATCHES, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_batch_buffers_are_reused_not_faulted_in_again():
    pages = 10 * 2000 * 10_000 // 4096
    # glibc's default trims the freed 20 MB off the heap, so each batch faults again
    assert faults_of_10_batches("default") > pages // 2
    assert faults_of_10_batches("tuned") < pages // 50

