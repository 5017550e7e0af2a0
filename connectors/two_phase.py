"""The two-phase commit sink: how a system other than Kafka joins a checkpoint.

A checkpoint completes at one moment, the Kafka commit of its offsets (with metadata
naming it) and outputs. Any other sink takes part as Flink's TwoPhaseCommitSinkFunction
does, with Kafka's transaction as the one decision everything else follows:

  begin      a new epoch: what `write` gets from now on belongs to the next checkpoint
  write      one record, during the epoch (buffered, or written into an open transaction)
  prepare    at the checkpoint's barrier, once its snapshot is durable: make the epoch's
             writes durable but invisible, so they can still go either way
  commit     once the Kafka commit succeeded: make them visible
  abort      the checkpoint failed before its Kafka commit was made: throw the epoch's
             writes away, prepared or not
  recover    on restore (and after a rewind), with the checkpoint id the committed offset
             names: drop unprepared writes, commit what was prepared for that checkpoint
             (or before it) and roll back what was prepared after it

A crash between the Kafka commit and a sink's commit is therefore covered by the next
`recover` of the task, wherever it runs. The checkpoint coordinator drives every sink of
every task through these calls (service/checkpointing/coordinator.py); the Kafka output
maps onto the same steps (docs/architecture.md, "Transactional sinks").

A job names a sink with `.sink(SomeSink(...))`: a `TransactionalSink` that opens one
`TwoPhaseCommitSink` per task, since a task (one input partition of one stage) is what
moves between workers, and its next owner must resolve what its last one prepared.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from eos.errors import RecordError

# A record the sink cannot take (a constraint says no): the task's error policy decides,
# given the error and the Kafka record that produced the row.
Reject = Callable[[RecordError, Any], None]

# PostgreSQL's limit on a prepared transaction's name, and a practical one elsewhere.
MAX_TRANSACTION_NAME = 200


@dataclass(frozen=True)
class SinkContext:
    """What one task's sink is told when it is opened."""

    job: str  # the job id (the consumer group): what the sink's transactions are named by
    task: str  # the task id, `{topic}-{partition}`
    sink: str  # the sink operator's uid
    # The worker process's incarnation token: a sink that fences its predecessors (a
    # frozen process of the same task that wakes up) claims the task with it.
    owner: str
    # False under --processing-guarantee at-least-once: no transactions across the commit,
    # writes may repeat after a crash.
    exactly_once: bool
    # How long the worker's Kafka transaction may stay open (a checkpoint interval plus a
    # checkpoint): a sink's own transaction of a process that froze may be ended after it.
    transaction_timeout_s: float
    # Where rows the target refuses go: the task's error policy (fail, dead-letter, skip).
    reject: Reject

    def transaction_prefix(self) -> str:
        """`eos:{job}:{sink}:{task}`, the names of this task's transactions up to the
        checkpoint id; shortened with a digest when a name would be too long."""
        prefix = f"eos:{self.job}:{self.sink}:{self.task}"
        if len(prefix) + 21 <= MAX_TRANSACTION_NAME:
            return prefix
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
        return f"{prefix[:MAX_TRANSACTION_NAME - 21 - 18]}~{digest}"

    def transaction_name(self, checkpoint_id: int) -> str:
        return f"{self.transaction_prefix()}:{checkpoint_id}"


def checkpoint_of(name: str, prefix: str) -> int | None:
    """The checkpoint id in a transaction name of `prefix`, or None if not one of its."""
    head, sep, tail = name.rpartition(":")
    return int(tail) if sep and head == prefix and tail.isdigit() else None


@runtime_checkable
class TwoPhaseCommitSink(Protocol):
    """One task's participant in the checkpoints (see the module doc). Calls come from
    the worker's loop thread, never at once. `write`, `prepare`, `commit` and `recover`
    may raise `SinkUnavailableError` (the epoch cannot be committed: the checkpoint
    fails and the task is rewound) or `SinkFencedError` (a newer process owns the task);
    a row the target refuses goes to `context.reject` instead."""

    def begin(self) -> None: ...

    def write(self, key: Any, value: Any, source: Any) -> None:
        """`source` is the Kafka record the value came from, for errors and dead letters."""

    def prepare(self, checkpoint_id: int) -> None: ...

    def commit(self, checkpoint_id: int, deadline: CommitDeadline) -> None:
        """Retries while `deadline.remaining(...)` is above 0, then keeps the commit
        pending; never raises for a target it cannot reach."""

    def abort(self) -> None: ...

    def recover(self, committed_checkpoint_id: int) -> None: ...

    @property
    def pending(self) -> bool:
        """Whether the sink holds work the next checkpoint must settle (writes of the
        epoch, or a commit that could not be made yet)."""

    def close(self) -> None:
        """Ends the sink, dropping unprepared writes; what it prepared is left to the
        task's next `recover` (whether its checkpoint committed may be unknown)."""


class CommitDeadline:
    """When the sinks of one checkpoint stop retrying their commits: set by the first
    that has to retry, from its own `commit_timeout`. A database that is down then holds
    the loop up once per checkpoint, not once per task and sink; a sink that gives up
    keeps its commit pending for the task's next recovery."""

    def __init__(self) -> None:
        self._at: float | None = None

    def remaining(self, timeout_s: float) -> float:
        """Seconds left to retry (none once the deadline passed), starting the deadline
        `timeout_s` from now if no sink started it yet."""
        now = time.monotonic()
        if self._at is None:
            self._at = now + timeout_s
        return max(0.0, self._at - now)


def commit_prepared(sinks: Iterable[TwoPhaseCommitSink], checkpoint_id: int) -> None:
    """Once checkpoint n is complete: every sink of its tasks commits what it prepared,
    all by one deadline."""
    deadline = CommitDeadline()
    for sink in sinks:
        sink.commit(checkpoint_id, deadline)


@runtime_checkable
class TransactionalSink(Protocol):
    """What a job passes to `.sink(...)`: checked once when a worker starts, then opened
    once per task."""

    def check(self, exactly_once: bool) -> None:
        """Verifies (or creates) the target before any record is read; raises
        ConfigurationError or SinkUnavailableError naming what is wrong."""

    def open(self, context: SinkContext) -> TwoPhaseCommitSink: ...

    def describe(self) -> str:
        """A short name for logs and errors, e.g. `PostgreSQL table public.totals`."""
