"""Who is in the job's consumer group, and ending the transactions of those who left.

A worker that dies mid-transaction leaves its transaction open, and an open transaction
holds back the last stable offset of every partition it wrote to: read_committed readers
of the repartition and output topics stall behind it, on every worker. The worker's own
restart ends it (`init_transactions` aborts it); if the worker does not come back, the
transaction coordinator aborts it only after `transaction.timeout.ms`.

So after every rebalance each worker looks at the group's members, and for every worker
that was a member at its previous look and is gone now it initialises a producer with
that worker's transactional id: the coordinator aborts the dangling transaction at once
and bumps the producer epoch, which also fences the departed process should it only be
frozen. A dead worker's partitions then produce output again one session timeout after
its death, not one transaction timeout.

This never fences a new instance of the departed slot: a worker initialises its own
transactional id only in its first assignment callback, after a rebalance that includes
it has completed. That rebalance needs every member to rejoin, and a member rejoins only
after its previous assignment callback, where the fencing runs, has returned. Exactly-once
does not rest on this argument (producer epochs and the group generation do that); a
mistaken fence (a broker restart expires every session, and members rejoin one by one)
makes the fenced worker initialise again and redo its work since its last checkpoint;
see SlotGuard below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from connectors.kafka_waits import KafkaWaits, backoff_delays
from eos.errors import ProducerFencedError

log = logging.getLogger(__name__)


def transactional_id(group: str, worker_id: str) -> str:
    return f"{group}-{worker_id}"


def worker_of_member(group: str, group_instance_id: str | None, member_client_id: str | None) -> str | None:
    """The worker id of a group member: its static instance id, else read back from the
    client id every worker's consumer sets (`{group}-{worker}`, see
    connectors/kafka_source.py); None for a foreign member."""
    if group_instance_id:
        return group_instance_id
    prefix = f"{group}-"
    if member_client_id and member_client_id.startswith(prefix) and len(member_client_id) > len(prefix):
        return member_client_id[len(prefix):]
    return None


class GroupView:
    """The group's current members, by worker id, through an admin client of its own."""

    def __init__(self, group: str, admin_config: dict[str, Any], timeout_s: float) -> None:
        self.group = group
        self.timeout_s = timeout_s
        self._admin_config = admin_config
        self._admin = AdminClient(admin_config)

    def members(self) -> list[tuple[str, str]] | None:
        """(worker id, member id) of the group's members, or None when the group could
        not be described. Foreign members are left out."""
        try:
            future = self._admin.describe_consumer_groups(
                [self.group], request_timeout=self.timeout_s)[self.group]
            description = future.result(timeout=self.timeout_s)
        except (KafkaException, FutureTimeout) as exc:
            log.warning("cannot list the members of group %s: %s", self.group,
                        exc or f"no answer within {self.timeout_s:.0f}s")
            # An admin client that asked while the cluster was away can stay without
            # answers after it is back (librdkafka 2.x): the next look uses a new one.
            self._admin = AdminClient(self._admin_config)
            return None
        members = []
        for member in description.members:
            worker = worker_of_member(self.group, member.group_instance_id, member.client_id)
            if worker is not None:
                members.append((worker, member.member_id))
        return members

    def workers(self) -> set[str] | None:
        """Worker ids of the group's members, or None when the group could not be described."""
        members = self.members()
        return None if members is None else {worker for worker, _ in members}

    def lists(self, worker: str) -> bool | None:
        workers = self.workers()
        return None if workers is None else worker in workers


class DepartedWorkerFencer:
    def __init__(self, view: GroupView, own_worker: str, producer_config: dict[str, Any],
                 timeout_s: float) -> None:
        self.view = view
        self.group = view.group
        self.own_worker = own_worker
        self.timeout_s = timeout_s
        self._producer_config = producer_config
        self._previous: set[str] | None = None

    def after_rebalance(self) -> list[str]:
        """Fences the workers that left since the last call; returns their ids."""
        live = self.live_workers()
        if live is None:
            return []
        departed = sorted((self._previous or set()) - live - {self.own_worker})
        self._previous = live
        for worker in departed:
            self._fence(worker)
        return departed

    def live_workers(self) -> set[str] | None:
        """None when the group could not be described: then the departure is noticed at
        a later rebalance, or the transaction timeout ends the transaction."""
        return self.view.workers()

    def _fence(self, worker: str) -> None:
        tid = transactional_id(self.group, worker)
        began = time.monotonic()
        producer = Producer({**self._producer_config, "transactional.id": tid})
        try:
            producer.init_transactions(self.timeout_s)
            log.info("worker %s left the group: ended its open transaction (transactional id %s) in %.2fs",
                     worker, tid, time.monotonic() - began)
        except KafkaException as exc:
            log.warning("worker %s left the group, but its transactional id %s could not be fenced (%s); "
                        "its open transaction, if any, ends after transaction.timeout.ms", worker, tid, exc)
        finally:
            producer.flush(0)


class SlotGuard:
    """Whether this process still holds its worker slot, asked before it initialises the
    slot's transactional id again (every abort does).

    A process frozen (or cut off) while a replacement of its slot started hears, when it
    wakes, of its lost partitions or of a rebalance before it hears of being fenced;
    initialising again would fence the replacement and leave the old process running in
    its place. It must stop (exit 3). Two signs say it was replaced:
    - a newer process of the slot began in the same state directory (the incarnation
      record), which also covers an old process woken before its session expired, when
      the group still lists both;
    - the group lists a member under its worker id and none of the member ids this
      process has held (its session expired, and a replacement elsewhere joined).

    Otherwise nobody else holds the slot: a peer that saw this worker missing from the
    group (a broker restart expires every session at once, and members rejoin one by
    one) ended its transaction as it would a dead worker's, and the worker initialises
    again and resumes from its last checkpoint, as a Kafka Streams thread does when its
    tasks migrated away while it lived.
    """

    def __init__(self, view: GroupView, worker_id: str, own_member_ids: Callable[[], set[str]],
                 superseded: Callable[[], bool], waits: KafkaWaits,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.view = view
        self.worker_id = worker_id
        self.own_member_ids = own_member_ids
        self.superseded = superseded
        self.waits = waits
        self.sleep = sleep

    def confirm(self) -> None:
        """Returns when this process may initialise the slot's transactional id again;
        raises ProducerFencedError when another instance holds the slot. While the group
        cannot be described it waits, as initialising the transactional id would."""
        if self.superseded():
            raise ProducerFencedError(
                f"worker slot {self.worker_id} was taken over by a newer process started in the same "
                "state directory: this process was frozen or cut off and replaced; it stops without "
                "touching the slot's transactions")
        members = self._members()
        ours = self.own_member_ids()
        holders = {member for worker, member in members if worker == self.worker_id}
        if holders and not holders & ours:
            raise ProducerFencedError(
                f"worker slot {self.worker_id} was taken over by another instance in the group (member "
                f"{', '.join(sorted(holders))}): this process was frozen or cut off past its session "
                "timeout and replaced; it stops without touching the slot's transactions")

    def _members(self) -> list[tuple[str, str]]:
        delays = backoff_delays()
        with self.waits.waiting("describe_consumer_groups"):
            while (members := self.view.members()) is None:
                self.sleep(next(delays))
        return members
