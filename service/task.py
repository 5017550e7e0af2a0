"""A task: one partition of one stage, with its operator chain and its state.

The task is where records meet the operator chain and where a failure gets its
address: any exception while processing a record becomes a `RecordError` naming the
topic, partition, offset and, when a user function raised, the operator's uid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.serdes import BYTES, SerdeError
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
    def __init__(self, stage: Stage, partition: int, state: TaskState | None) -> None:
        self.stage = stage
        self.topic = stage.topic
        self.partition = partition
        self.id = task_id(stage.topic, partition)
        self.state = state
        self.next_offset: int | None = None
        self.records_since_checkpoint = 0
        self.completed = CompletedCheckpoint(0, None, None)
        # The manifest of a checkpoint persisted but not (yet known to be) committed:
        # if its commit's outcome was ambiguous, Kafka's committed offset decides.
        self.attempted_manifest: Manifest | None = None
        self._push = None
        self._ctx: ChainContext | None = None
        self._deserialize_key = None if stage.key_serde is BYTES else stage.key_serde.deserialize
        self._deserialize_value = None if stage.value_serde is BYTES else stage.value_serde.deserialize

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
        """Runs records of this task's partition through the chain, in order."""
        push, ctx = self._push, self._ctx
        deserialize_key, deserialize_value = self._deserialize_key, self._deserialize_value
        msg = None
        try:
            for msg in msgs:
                raw = msg.value()
                ctx.raw = raw
                key = msg.key()
                if deserialize_key is not None:
                    key = deserialize_key(key)
                push(key, raw if deserialize_value is None else deserialize_value(raw))
        except OperatorFailure as exc:
            raise RecordError(str(exc.cause) or type(exc.cause).__name__, topic=msg.topic(),
                              partition=msg.partition(), offset=msg.offset(), operator=exc.uid,
                              cause=exc.cause) from exc.cause
        except SerdeError as exc:
            raise RecordError(f"cannot deserialise with the {self.stage.value_serde.name} serde: {exc}",
                              topic=msg.topic(), partition=msg.partition(),
                              offset=msg.offset()) from exc
        self.next_offset = msgs[-1].offset() + 1
        self.records_since_checkpoint += len(msgs)

    @property
    def changed(self) -> bool:
        return self.records_since_checkpoint > 0
