"""``canwatch detect`` whose record parse blocks forever on a batch holding BLOCK_KEY.

Test harness for a stalled poll loop (tests/test_watchdog.py): the main thread
hangs inside kafka-python's ``poll()``, as it did in issue 21, while everything
else (the watchdog, the signal thread, the metrics server) runs as deployed.

    python tests/blocked_detect.py detect --config ... (the arguments of canwatch)
"""

from __future__ import annotations

import sys
import threading

from detector.cli import main
from detector.transport import kafka_records

BLOCK_KEY = b"canwatch-test-block-the-poll"


def _blocking(parse):
    def _records(batch):
        if BLOCK_KEY in batch._buffer:
            threading.Event().wait()  # forever: only the watchdog or a signal ends this
        return parse(batch)

    return _records


if __name__ == "__main__":
    kafka_records._records = _blocking(kafka_records._records)
    sys.exit(main(sys.argv[1:]))
