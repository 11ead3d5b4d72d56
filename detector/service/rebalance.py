"""Partitions moving between the group's members: whose state is kept, whose dropped.

The vehicles of partitions that move elsewhere are *dropped*: their offsets were
committed only as far as their open windows, so the new owner re-reads and
rebuilds exactly that state. Partitions that stay with this instance keep their
state and their fetch position (kafka-python 3 keeps the position of a partition
re-assigned by an eager rebalance; dropping the state would lose its open
windows). Partitions *lost* by eviction resume from the committed offsets, so
their state is dropped too.

Kept apart from the loop because kafka-python calls it, on its own schedule,
from inside a poll; it only decides which partitions' state goes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kafka import ConsumerRebalanceListener

from detector.service.broker_contact import BrokerContact
from detector.service.metrics import DetectorMetrics
from detector.service.offset_ledger import OffsetLedger

log = logging.getLogger("canwatch.detect")


class Rebalance(ConsumerRebalanceListener):
    def __init__(
        self,
        ledger: OffsetLedger,
        forget: Callable[[set], None],
        contact: BrokerContact,
        metrics: DetectorMetrics,
    ) -> None:
        self.ledger = ledger
        self.forget = forget  # drops the state of partitions no longer ours
        self.contact = contact
        self.metrics = metrics
        self.consumer = None  # kafka-python calls back with partitions only
        self.count = 0  # callbacks run so far: a poll that saw one moved partitions
        self.revoking: set = set()  # revoked, state kept until the assignment says

    def subscribe(self, consumer, topic: str) -> None:
        self.consumer = consumer
        consumer.subscribe([topic], listener=self)

    def on_partitions_revoked(self, revoked) -> None:
        self.count += 1
        # No commit here: kafka-python runs this on its IO thread, where blocking
        # calls are refused. Offsets were committed after the last poll, and only
        # as far as is safe, so the new owner re-reads what the dropped state held.
        # Eager rebalancing (kafka-python's default) revokes every partition, then
        # assigns: partitions that come straight back keep their fetch position
        # (kafka-python 3 preserves it), so they keep their state too, until
        # assigned. Partitions already gone (cooperative protocol) are dropped now.
        revoked = set(revoked)
        current = set(self.consumer.assignment())
        self.revoking |= revoked & current
        self.forget(revoked - current)

    def on_partitions_lost(self, lost) -> None:
        self.count += 1
        # Evicted from the group: kafka-python forgets these partitions' positions
        # and resumes them from the committed offsets; the state goes with them.
        lost = set(lost)
        self.revoking -= lost
        self.forget(lost)

    def on_partitions_assigned(self, assigned) -> None:
        self.count += 1
        tps = set(assigned)
        self.contact.member()  # a fresh assignment: we are a member
        for tp in self.revoking & tps:  # kept: continue right after our state
            if tp in self.ledger.next_offset:
                self.consumer.seek(tp, self.ledger.next_offset[tp])
        self.forget(self.revoking - tps)
        self.revoking = set()
        self.metrics.rebalanced([tp.partition for tp in assigned])
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
