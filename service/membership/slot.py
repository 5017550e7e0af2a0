"""The worker slot: a worker id, its transactional id, and which process holds it.

A slot is held by one process at a time. Every process stamps its consumer's client id
with its incarnation (connectors/group.py), so whoever describes the group sees which
processes of a slot are members and which of them started last. A static member's entry
is the one exception: the group keeps one entry per instance id and, when a newer
process joins with it, keeps the first client id and changes only the member id, so
there the member id tells: an entry this process never held is another's.

- at start, with dynamic membership, a process waits for any other member listed under
  its worker id to leave (one that died or froze leaves after its session timeout); one
  that stays is a live process with the same worker id, and the new one stops
  (DuplicateWorkerError). A static member joins at once instead: the group itself then
  retires any older member of its instance id (FENCED_INSTANCE_ID), dead, frozen or
  alive, which is what lets a frozen one not take the slot back when it wakes. Only a
  process whose predecessor here was replaced waits first, so that a supervisor
  restarting it does not make the two take turns;
- later, before this process initialises its transactional id again after a fencing or
  after the group forgot it, it asks whether a newer process of its slot is listed;
  then it was frozen or cut off and replaced, and must stop instead of fencing the
  newer one (the transaction's owner turns that into the REPLACED outcome).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from connectors.group import GroupView, Member
from connectors.kafka_waits import KafkaWaits, backoff_delays
from eos.errors import DuplicateWorkerError

log = logging.getLogger(__name__)

CLAIM_POLL_S = 0.5
# How long an entry under this process's own client id may take to show up as its own.
OWN_REJOIN_WAIT_S = 10.0


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
    def __init__(self, view: GroupView, worker_id: str, stamp: str, *, static: bool = False,
                 own_member_ids: Callable[[], set[str]] = set, waits: KafkaWaits | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.worker_id = worker_id
        self.stamp = stamp
        self.static = static
        # Every member id this process's consumer has held (a rejoin gets a new one).
        self.own_member_ids = own_member_ids
        self.waits = waits if waits is not None else KafkaWaits()
        self.sleep = sleep
        self.clock = clock
        # The stamp of the newer process found holding the slot, once one was.
        self.replaced_by: str | None = None

    def holder(self) -> str | None:
        """The other process of this slot that the group lists, newer than this one,
        described; None when there is none. Waits while the group cannot be described,
        as initialising the transactional id would."""
        mine = [m for m in self._members() if m.worker == self.worker_id]
        if self.static:
            others = self._static_others(mine)
        else:
            others = sorted((m for m in mine if m.stamp and m.stamp > self.stamp), key=lambda m: m.stamp or "")
        if not others:
            return None
        holder = others[-1]
        self.replaced_by = holder.stamp if not self.static else f"member {holder.member_id}"
        what = f"member {holder.member_id}" if self.static else holder.describe()
        return (f"worker slot {self.worker_id} is held by a newer process, {what}: this process (incarnation "
                f"{self.stamp}) was frozen or cut off and replaced, or the other was started with the same "
                "--worker-id; this one stops without touching the slot's transactions")

    def _static_others(self, mine: list[Member]) -> list[Member]:
        """The slot's entries this process's consumer does not hold. An entry under this
        process's own client id is either its own rejoin (after its session expired),
        which the consumer reports once its join completes, or a newer process's takeover
        (the group keeps the first client id of a static entry): it is asked again until
        the consumer holds it or OWN_REJOIN_WAIT_S passed."""
        deadline = self.clock() + OWN_REJOIN_WAIT_S
        while True:
            own = self.own_member_ids()
            others = [m for m in mine if m.member_id not in own]
            if not others or any(m.stamp != self.stamp for m in others) or self.clock() >= deadline:
                return others
            self.sleep(CLAIM_POLL_S)
            mine = [m for m in self._members() if m.worker == self.worker_id]

    def claim(self, wait_s: float, known_dead: Callable[[str | None], bool],
              predecessor_replaced: bool = False) -> None:
        """Returns once no other process of this slot is listed in the group. One that
        stays listed for `wait_s` (longer than a session timeout: its heartbeats keep
        it there) is alive, and this process stops naming it. `known_dead` tells a
        predecessor this machine knows to have ended (it held the slot's local lock).

        A static member joins at once, unless its predecessor here was replaced: the
        group retires any older member of its instance id itself (the one way to retire
        a frozen process, which may wake at any time). After a replacement the entry's
        client id is stale, so any member of the slot is waited for."""
        if self.static and not predecessor_replaced:
            return
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
