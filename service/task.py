"""A task: one partition of one stage, with its operator chain and its state.

The task is where records meet the operator chain and where a failure gets its
address: any exception while processing a record becomes a `RecordError` naming the
topic, partition, offset and, when a user function raised, the operator's uid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.serdes import BYTES, SerdeError
from service.error_policy import ErrorHandler
from service.errors import RecordError
from service.operators import ChainContext, OperatorFailure, build_chain
from service.planner import Stage
from statestore.manifest import Manifest
from statestore.task_state import TaskState


@dataclass(frozen=True)
class CompletedCheckpoint:
    """The last checkpoint of a task known to be committed: where a rewind returns to."""

    checkpoint_id: int
    offset: int | None  # None: nothing committed yet, start from auto.offset.reset
    manifest: Manifest | None


def task_id(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


class Task:
    def __init__(self, stage: Stage, partition: int, state: TaskState | None,
                 errors: ErrorHandler) -> None:
        self.stage = stage
        self.topic = stage.topic
        self.partition = partition
        self.id = task_id(stage.topic, partition)
        self.state = state
        self.errors = errors
        self.next_offset: int | None = None
        self.records_since_checkpoint = 0
        self.completed = CompletedCheckpoint(0, None, None)
        # The manifest of a checkpoint persisted but not (yet known to be) committed:
        # if its commit's outcome was ambiguous, Kafka's committed offset decides.
        self.attempted_manifest: Manifest | None = None
        self._push = None
        self._ctx: ChainContext | None = None
        key_serde, value_serde = stage.key_serde, stage.value_serde
        self._key_serde = None if key_serde is BYTES else key_serde
        self._value_serde = None if value_serde is BYTES else value_serde

    @property
    def stateful(self) -> bool:
        return bool(self.stage.stateful_uids)

    def start(self, completed: CompletedCheckpoint, produce: Any) -> None:
        """(Re)builds the operator chain over the task's current state, positioned at
        the given completed checkpoint."""
        self.completed = completed
        self.attempted_manifest = None
        self.next_offset = completed.offset
        self.records_since_checkpoint = 0
        self._ctx = ChainContext(produce, self.state)
        self._push = build_chain(self.stage.root, self._ctx)

    def process(self, msgs: list) -> None:
        """Runs records of this task's partition through the chain, in order. A record
        that fails goes to the error handler; unless its policy is `fail`, processing
        continues with the next record."""
        push, ctx = self._push, self._ctx
        forwards_raw = self.stage.forwards_raw
        fast_key = careful_key = fast_value = careful_value = None
        if self._key_serde is not None:
            fast_key, careful_key = self._key_serde.fast_deserialize, self._key_serde.deserialize
        if self._value_serde is not None:
            fast_value, careful_value = self._value_serde.fast_deserialize, self._value_serde.deserialize
        records = iter(msgs)
        msg = None
        while True:
            try:
                for msg in records:
                    key = msg.key()
                    if fast_key is not None:
                        try:
                            key = fast_key(key)
                        except Exception:
                            key = careful_key(key)
                    value = msg.value()
                    if forwards_raw:
                        ctx.raw = value
                    if fast_value is not None:
                        try:
                            value = fast_value(value)
                        except Exception:
                            value = careful_value(value)
                    push(key, value)
                break
            except (OperatorFailure, SerdeError) as exc:
                self.errors.handle(self._record_error(msg, exc), msg, ctx.produce)
        self.next_offset = msgs[-1].offset() + 1
        self.records_since_checkpoint += len(msgs)

    def _record_error(self, msg: Any, exc: Exception) -> RecordError:
        where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        if isinstance(exc, OperatorFailure):
            return RecordError(f"{type(exc.cause).__name__}: {exc.cause}", operator=exc.uid,
                               cause=exc.cause, **where)
        part, serde = "value", self._value_serde
        if self._key_serde is not None:
            try:
                self._key_serde.deserialize(msg.key())
            except SerdeError:
                part, serde = "key", self._key_serde
        return RecordError(f"cannot deserialise the record {part} with the {serde.name} serde: {exc}",
                           operator=self.stage.root.uid, cause=exc, **where)

    @property
    def changed(self) -> bool:
        return self.records_since_checkpoint > 0
