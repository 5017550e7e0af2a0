"""Which process of a worker slot started last, recorded in the shared checkpoint storage.

Every process that claims a slot enters itself under `{group}/workers/{worker-id}/` with
a sequence number one past the highest it finds there. A process asked whether it was
replaced (its producer fenced, its instance id taken, the group forgot it) looks for an
entry after its own. The answer cannot come from the group: a static member's entry
keeps the client id of the process that created it, so after a takeover the group lists
the newer process under the older one's stamp, and a frozen static member that wakes
past its session timeout rejoins under its instance id and is granted the entry back.
The storage is shared by every worker of the job, wherever it runs, and the sequence
orders entries without trusting the machines' clocks.

Two processes that enter at the same moment may draw the same number; the stamp (start
time, then random) orders those.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from connectors.kafka_waits import backoff_delays
from statestore.storage.base import CheckpointStorage, StorageError

log = logging.getLogger(__name__)

ENTRY_SUFFIX = ".json"


def slot_prefix(group: str, worker_id: str) -> str:
    return f"{group}/workers/{worker_id}"


@dataclass(frozen=True, order=True)
class SlotEntry:
    sequence: int
    stamp: str

    @property
    def name(self) -> str:
        return f"{self.sequence:012d}-{self.stamp}{ENTRY_SUFFIX}"


def parse_entry_name(name: str) -> tuple[int, str] | None:
    """(sequence, stamp) from an entry's object name; None for anything else."""
    if not name.endswith(ENTRY_SUFFIX):
        return None
    sequence, _, stamp = name[:-len(ENTRY_SUFFIX)].partition("-")
    return (int(sequence), stamp) if sequence.isdigit() and stamp else None


class SlotRegister:
    def __init__(self, storage: CheckpointStorage, group: str, worker_id: str, stamp: str,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.storage = storage
        self.prefix = slot_prefix(group, worker_id)
        self.stamp = stamp
        self.sleep = sleep
        self.own: SlotEntry | None = None

    def enter(self) -> SlotEntry:
        """Records this process as the slot's newest, then drops the entries before it
        (only a newer entry ever answers a question, so older ones say nothing)."""
        entries = self._entries()
        sequence = (entries[-1].sequence + 1) if entries else 1
        self.own = SlotEntry(sequence, self.stamp)
        body = json.dumps({"stamp": self.stamp, "host": socket.gethostname(), "pid": os.getpid(),
                           "entered_at": time.time()}).encode()
        self._retrying("enter the worker slot's register", lambda: self.storage.put_atomic(
            f"{self.prefix}/{self.own.name}", body))
        older = [f"{self.prefix}/{e.name}" for e in entries if e < self.own]
        if older:
            try:
                self.storage.delete(older)
            except StorageError as exc:
                log.warning("could not drop %d older entries of %s: %s", len(older), self.prefix, exc)
        return self.own

    def newer(self) -> SlotEntry | None:
        """The newest entry after this process's own; None when this process is the
        newest (or never entered, having never held the slot)."""
        if self.own is None:
            return None
        entries = self._entries()
        return entries[-1] if entries and entries[-1] > self.own else None

    def describe(self, entry: SlotEntry) -> str:
        """An entry as its process wrote it: incarnation, host and pid."""
        where = ""
        try:
            body = json.loads(self.storage.get_bytes(f"{self.prefix}/{entry.name}"))
            where = f", pid {body.get('pid')} on {body.get('host')}"
        except (StorageError, ValueError, AttributeError):  # dropped meanwhile, or unreadable: the name is enough
            pass
        return f"incarnation {entry.stamp} (entry {entry.sequence} of the slot's register{where})"

    def _entries(self) -> list[SlotEntry]:
        keys = self._retrying("read the worker slot's register", lambda: self.storage.list(self.prefix))
        return sorted(SlotEntry(*parsed) for key in keys
                      if (parsed := parse_entry_name(key.rsplit("/", 1)[-1])) is not None)

    def _retrying(self, what: str, call: Callable):
        """The question must be answered before the slot's transactional id is touched,
        so an unreachable storage is waited out, as an unreachable cluster is."""
        delays = backoff_delays()
        while True:
            try:
                return call()
            except StorageError as exc:
                delay = next(delays)
                log.warning("cannot %s under %s (%s); trying again in %.1fs", what,
                            self.storage.describe(self.prefix), exc, delay)
                self.sleep(delay)
