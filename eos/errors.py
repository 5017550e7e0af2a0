"""The product's exception hierarchy.

Every error a user can meet names what happened, where (topic, partition, offset,
checkpoint, file) and, where we know it, what to do about it. Catching `EosError`
catches everything the product raises on purpose; anything else is a bug.
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


class StateStoreError(EosError):
    """The local state store failed (disk full, read-only or vanished state directory)."""


class CheckpointError(EosError):
    """A checkpoint could not be taken, persisted or committed. The transaction that
    would have committed it is aborted; the worker rewinds to the last completed one."""


class CheckpointTimeoutError(CheckpointError):
    """A checkpoint's snapshot was not durable within --checkpoint-timeout."""


class SnapshotMissingError(EosError):
    """A committed offset names a snapshot that cannot be restored. Never answered by
    starting empty: that would silently lose state."""


class CorruptSnapshotError(SnapshotMissingError):
    """A snapshot file exists but does not match the checksum its manifest recorded."""


class SnapshotUnreachableError(SnapshotMissingError):
    """Checkpoint storage could not be read (unreachable, permissions): whether the
    snapshot is intact is unknown, so this never counts as missing or corrupt."""


class PartitionCountChangedError(EosError):
    """A topic's partition count differs from the one its tasks' state was built with:
    keys now map to other partitions than their state."""


class ProducerFencedError(EosError):
    """Another instance of this worker slot took over the transactional id or the
    group membership. This instance must stop: continuing would fight the new owner."""


class TransactionAbortedError(EosError):
    """The open transaction had to be aborted; work since the last completed checkpoint
    is discarded and the worker rewinds."""


class SavepointError(EosError):
    """A savepoint cannot be taken, read or resumed from: the message names the
    savepoint (and file, operator or partition) and why."""


class CorruptSavepointError(SavepointError):
    """A savepoint file does not match the size or checksum its manifest recorded."""



class GroupRebalancedError(TransactionAbortedError):
    """The consumer group moved to a new generation while a checkpoint committed, so
    the group coordinator refused its offsets (the zombie fence of KIP-447 at work).
    Expected during rebalances: the worker rewinds without counting a failure."""
