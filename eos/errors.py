"""The product's exception hierarchy, at the bottom of every layer.

Every error a user can meet names what happened, where (topic, partition, offset,
checkpoint, file) and, where we know it, what to do about it. Catching `EosError`
catches everything the product raises on purpose; anything else is a bug. Each type
means one thing, and the worker's exit code follows from the type alone.

What goes wrong inside a transaction is not an exception here: the transaction's owner
(connectors/transactions.py) turns it into an outcome the worker's loop acts on.
"""

from __future__ import annotations


class EosError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigurationError(EosError):
    """The user asked for something that cannot work; fix the command line or job."""


class LocalKafkaError(EosError):
    """The locally managed Kafka broker could not be fetched, started or reached."""


class RecordError(EosError):
    """A record could not be processed. Carries where it came from, so the message
    alone is enough to find the record with any Kafka tool."""

    def __init__(
        self,
        reason: str,
        *,
        topic: str,
        partition: int,
        offset: int,
        operator: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.operator = operator
        self.cause = cause
        where = f"topic {topic!r} partition {partition} offset {offset}"
        if operator:
            where += f" (operator {operator!r})"
        detail = ""
        if cause is not None and str(cause) not in reason:
            detail = f": {type(cause).__name__}: {cause}"
        super().__init__(f"cannot process record at {where}: {reason}{detail}")


class MissingInputError(EosError):
    """Input records the job never processed are gone from Kafka (retention or a
    deletion ran past the committed offset). The message names the topic, partition,
    committed offset, earliest offset left and how many records are gone."""


class StateStoreError(EosError):
    """The local state store failed (disk full, read-only or vanished state directory)."""


class CheckpointTimeoutError(EosError):
    """One checkpoint's snapshot was not durable within --checkpoint-timeout; that
    checkpoint fails and counts toward --tolerable-failures."""


class CheckpointsFailingError(EosError):
    """Checkpoints cannot complete: more consecutive failures than --tolerable-failures,
    or the final checkpoint at shutdown failed."""


class SnapshotLostError(EosError):
    """A committed offset names a snapshot that is gone or damaged. Never answered by
    starting empty: that would silently lose state."""


class SnapshotMissingError(SnapshotLostError):
    """The snapshot (or a file of it) a committed offset names is not in storage."""


class CorruptSnapshotError(SnapshotLostError):
    """A snapshot file exists but does not match what its manifest recorded."""


class SnapshotUnreachableError(EosError):
    """Checkpoint storage could not be read (unreachable, permissions): whether the
    snapshot is intact is unknown, so this is never taken for a lost snapshot."""


class PartitionCountChangedError(EosError):
    """A topic's partition count differs from the one its tasks' state was built with:
    keys now map to other partitions than their state."""


class WorkerReplacedError(EosError):
    """A newer process of this worker slot holds it (its incarnation is listed in the
    group): this process stops without touching the slot's transactions."""


class DuplicateWorkerError(EosError):
    """Another live process already runs this worker id in the group: this one stops
    at start. A restart does not help while the other runs."""


class KafkaClientError(EosError):
    """A Kafka client failed in a way no new transaction can mend (its consumer was
    fenced, authorisation was refused, the producer cannot be initialised)."""


class SavepointError(EosError):
    """A savepoint cannot be taken, read or resumed from: the message names the
    savepoint (and file, operator or partition) and why."""


class CorruptSavepointError(SavepointError):
    """A savepoint file does not match the size or checksum its manifest recorded."""


class SinkUnavailableError(EosError):
    """A transactional sink cannot commit the current epoch: its connection was lost, a
    lock or statement timed out, its disk is full. The message names the sink, table,
    task and checkpoint. The checkpoint fails (counting toward --tolerable-failures) and
    the task's work since its last checkpoint is redone; at restore, recovery waits for
    the sink up to its timeout and then stops the worker (a restart may cure it)."""


class SinkFencedError(EosError):
    """A newer process took over this task's sink (it claimed the task with its own
    token): this process must not commit anything more there."""
class SchemaRegistryUnavailableError(EosError):
    """The schema registry could not be reached, or failed, while a serde needed it: no
    record is at fault, so the worker stops (a restart strategy restarts it) rather than
    send records to the error policy."""
