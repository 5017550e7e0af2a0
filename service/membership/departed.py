"""Ending the open transactions of workers that left the group.

A worker that dies mid-transaction leaves its transaction open, and an open transaction
holds back the last stable offset of every partition it wrote to: read_committed readers
of the repartition and output topics stall behind it, on every worker, until its slot's
next process initialises the transactional id or `transaction.timeout.ms` passes. So after
every rebalance each worker looks at the group, and for every slot that had a member at
its previous look and has none now it initialises that slot's transactional id: the
coordinator aborts the dangling transaction and bumps the epoch, which also fences the
departed process should it only be frozen.

A slot whose new process is already listed is left alone: that process initialised the
id itself. One that starts just after the look may be fenced by it; the transaction's
owner takes that as a fencing by a peer (its slot's register has no newer process) and
redoes its work since the last checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaException, Producer

from connectors.group import Member
from connectors.transactions import ProducerFactory
from service.membership.slot import transactional_ids

log = logging.getLogger(__name__)


class DepartedWorkerFencer:
    def __init__(self, group: str, own_worker: str, producer_config: dict[str, Any], timeout_s: float,
                 producer_factory: ProducerFactory = Producer) -> None:
        self.group = group
        self.own_worker = own_worker
        self.timeout_s = timeout_s
        self.producer_factory = producer_factory
        self._producer_config = producer_config
        self._previous: set[str] | None = None

    def after_rebalance(self, members: list[Member] | None) -> list[str]:
        """Fences the slots that lost their last member since the previous look at the
        group (`members`, None: it could not be described); returns them."""
        if members is None:  # noticed at a later rebalance, or the transaction timeout ends it
            return []
        live = {m.worker for m in members}
        departed = sorted((self._previous or set()) - live - {self.own_worker})
        self._previous = live
        for worker in departed:
            self._fence(worker)
        return departed

    def _fence(self, worker: str) -> None:
        for tid in transactional_ids(self.group, worker):
            self._fence_id(worker, tid)

    def _fence_id(self, worker: str, tid: str) -> None:
        began = time.monotonic()
        producer = self.producer_factory({**self._producer_config, "transactional.id": tid})
        try:
            producer.init_transactions(self.timeout_s)
            log.info("worker %s left the group: ended its open transaction (transactional id %s) in %.2fs",
                     worker, tid, time.monotonic() - began)
        except KafkaException as exc:
            log.warning("worker %s left the group, but its transactional id %s could not be fenced (%s); "
                        "its open transaction, if any, ends after transaction.timeout.ms", worker, tid, exc)
        finally:
            producer.flush(0)
