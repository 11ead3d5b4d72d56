"""Taking records from Kafka: a poll, the batch gathered after it, and polls that
only keep the group membership.

After a poll with records, the loop keeps taking what arrives ``GATHER_S``
longer, up to ``kafka.max_poll_records`` (kafka-python fetches the next response
while a poll is processed): every batch has a fixed cost, so a backlog goes
10-15 % faster in fewer, larger batches; a live stream waits at most this much
more. While a poll's output is unacknowledged, or the group membership
unconfirmed, the loop *holds*: polls with every partition paused, which keeps it
in the group (and runs the rebalance listener) without taking in records.

Also where the consumer stands (``positions``), for the watchdog. Functions
over a kafka-python consumer, kept apart from the loop because each
guards a subtlety of kafka-python's positions around rebalances.
"""

from __future__ import annotations

import time

from detector.service.rebalance import Rebalance

GATHER_S = 0.02


def take(consumer, timeout_ms: int, max_records: int) -> dict:
    """Resume whatever was paused, and poll."""
    resume_paused(consumer)
    return consumer.poll(timeout_ms=timeout_ms, max_records=max_records)


def gather(consumer, rebalance: Rebalance, polled: dict, n: int, limit: int) -> tuple[dict, int]:
    """``polled`` and what the next polls bring within GATHER_S, up to ``limit``
    records. A rebalance inside one of them may move partitions and their positions
    (see ``Rebalance.on_partitions_assigned``): then nothing gathered is kept, and
    the partitions still ours are sought back to the first record gathered."""
    deadline = time.monotonic() + GATHER_S
    while n < limit:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        generation = rebalance.count
        more = consumer.poll(timeout_ms=left_ms, max_records=limit - n)
        for tp, records in more.items():
            polled.setdefault(tp, []).extend(records)
        n += sum(len(v) for v in more.values())
        if rebalance.count != generation:
            assigned = consumer.assignment()
            for tp, records in polled.items():
                if tp in assigned:
                    consumer.seek(tp, records[0].offset)
            return {}, 0
        if not more:
            break
    return polled, n


def hold(consumer, timeout_ms: int) -> None:
    """Poll with every partition paused: keeps the group membership (and runs the
    rebalance listener) without taking in new records."""
    assigned = consumer.assignment()
    if assigned:
        consumer.pause(*assigned)
    polled = consumer.poll(timeout_ms=timeout_ms)
    for tp, records in polled.items():  # assigned during this very poll: not paused yet
        consumer.seek(tp, records[0].offset)


def resume_paused(consumer) -> None:
    paused = consumer.paused()
    if paused:
        consumer.resume(*paused)


def positions(consumer, taken: dict) -> dict:
    """The consumer's fetch positions, read from kafka-python's subscription state,
    never asked of the client (the loop may be inside it: this runs on the
    watchdog's thread). Another kafka-python: ``taken``, where the loop got to."""
    subscription = getattr(consumer, "_subscription", None)  # kafka-python 3.0
    states = getattr(subscription, "assignment", None)
    if states is None:
        return dict(taken)
    try:
        states = dict(states)
    except RuntimeError:  # changed by a rebalance on the IO thread meanwhile
        states = {}
    return {
        tp: getattr(getattr(st, "_position", None), "offset", None) for tp, st in states.items()
    }
