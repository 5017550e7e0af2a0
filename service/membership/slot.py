"""The worker slot: a worker id, its transactional id, and which process holds it.

A slot is held by one process at a time. Two sources answer two questions:

- **Is another process of the slot alive?** The group: every process stamps its
  consumer's client id with its incarnation (connectors/group.py). At start, with
  dynamic membership, a process waits for any other member listed under its worker id
  to leave (one that died or froze leaves after its session timeout); one that stays is
  a live process with the same worker id, and the new one stops (DuplicateWorkerError).
  A static member joins at once instead: the group itself then retires any older member
  of its instance id (FENCED_INSTANCE_ID), dead, frozen or alive. Only a process whose
  predecessor here was replaced waits first, so that a supervisor restarting it does not
  make the two take turns.
- **Did a newer process take the slot?** The slot's register in the shared checkpoint
  storage (register.py), which a process enters once its claim succeeds. Before a
  process initialises its transactional id again after a fencing, after the group
  forgot it, or after its consumer was fenced, it asks; a newer entry means it was
  frozen or cut off and replaced, and it must stop instead of fencing the newer one
  (the transaction's owner turns that into the REPLACED outcome). The group cannot
  answer this one: it keeps a static entry's first client id, and grants the entry
  back to a frozen static member that wakes and rejoins under its instance id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from connectors.group import GroupView, Member
from connectors.kafka_waits import KafkaWaits, backoff_delays
from eos.errors import DuplicateWorkerError
from service.membership.register import SlotRegister

log = logging.getLogger(__name__)

CLAIM_POLL_S = 0.5


def transactional_id(group: str, worker_id: str) -> str:
    return f"{group}-{worker_id}"


# A slot's producers: one per checkpoint epoch in flight (connectors/transactions.py).
PRODUCER_POOL = 2


def transactional_ids(group: str, worker_id: str) -> list[str]:
    """The transactional ids of a worker slot's producer pool: the slot's own, then
    `#1`, a separator no worker id can bring (worker ids are names, see config)."""
    first = transactional_id(group, worker_id)
    return [first] + [f"{first}#{i}" for i in range(1, PRODUCER_POOL)]


class SlotGuard:
    def __init__(self, view: GroupView, register: SlotRegister, worker_id: str, stamp: str, *,
                 static: bool = False, waits: KafkaWaits | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.register = register
        self.worker_id = worker_id
        self.stamp = stamp
        self.static = static
        self.waits = waits if waits is not None else KafkaWaits()
        self.sleep = sleep
        self.clock = clock
        # The stamp of the newer process found holding the slot, once one was.
        self.replaced_by: str | None = None

    def holder(self) -> str | None:
        """The newer process that took this slot, described; None when this process is
        still the slot's newest. Waits while the register cannot be read, as
        initialising the transactional id would wait for the cluster."""
        newer = self.register.newer()
        if newer is None:
            return None
        self.replaced_by = newer.stamp
        return (f"worker slot {self.worker_id} is held by a newer process, {self.register.describe(newer)}: "
                f"this process (incarnation {self.stamp}) was frozen or cut off and replaced, or the other was "
                "started with the same --worker-id; this one stops without touching the slot's transactions")

    def claim(self, wait_s: float, known_dead: Callable[[str | None], bool],
              predecessor_replaced: bool = False) -> None:
        """Returns once no other process of this slot is listed in the group, this
        process entered in the slot's register as its newest. One that
        stays listed for `wait_s` (longer than a session timeout: its heartbeats keep
        it there) is alive, and this process stops naming it. `known_dead` tells a
        predecessor this machine knows to have ended (it held the slot's local lock).

        A static member joins at once, unless its predecessor here was replaced: the
        group retires any older member of its instance id itself (the one way to retire
        a frozen process, which may wake at any time). After a replacement the entry's
        client id is stale, so any member of the slot is waited for."""
        if not self.static or predecessor_replaced:
            self._wait_for_others_to_leave(wait_s, known_dead)
        self.register.enter()

    def _wait_for_others_to_leave(self, wait_s: float, known_dead: Callable[[str | None], bool]) -> None:
        deadline = self.clock() + wait_s
        waiting_for: list[Member] = []
        while True:
            others = [m for m in self._members() if m.worker == self.worker_id
                      and (self.static or (m.stamp != self.stamp and not known_dead(m.stamp)))]
            if not others:
                if waiting_for:
                    log.info("worker id %s is free: %s left the group", self.worker_id,
                             ", ".join(m.member_id for m in waiting_for))
                return
            if self.clock() >= deadline:
                self.replaced_by = others[-1].stamp or f"member {others[-1].member_id}"
                raise DuplicateWorkerError(
                    f"worker id {self.worker_id} is already in use by a live process in group {self.view.group}: "
                    f"{'; '.join(m.describe() for m in others)}, still listed after {wait_s:.0f}s. This process "
                    f"(incarnation {self.stamp}) stops; give each worker its own --worker-id, or stop the other "
                    "process first (a restart of this one does not help while the other runs)")
            if not waiting_for:
                log.info("worker id %s is listed in the group by %s; waiting up to %.0fs for it to leave (a "
                         "process that died or froze leaves after its session timeout)", self.worker_id,
                         "; ".join(m.describe() for m in others), wait_s)
            waiting_for = others
            self.sleep(CLAIM_POLL_S)

    def _members(self) -> list[Member]:
        delays = backoff_delays()
        with self.waits.waiting("describe_consumer_groups"):
            while (members := self.view.members()) is None:
                self.sleep(next(delays))
        return members
