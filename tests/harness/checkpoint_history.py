"""Real checkpoint histories without Kafka: a task's RocksDB state changed, flushed,
snapshotted and persisted through the same TaskState and retention code a worker uses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from statestore.codecs import JSON_CODEC
from statestore.digests import DigestCache
from statestore.manifest import Manifest
from statestore.retention import RetainedSnapshots, snapshot_name
from statestore.snapshots import task_prefix
from statestore.state_dir import TaskDirectory
from statestore.storage.base import CheckpointStorage
from statestore.task_state import TaskState

TOPIC = "orders"


@dataclass
class TaskHistory:
    """One task writing checkpoints 1, 2, 3, ... with `retain` kept in storage."""

    storage: CheckpointStorage
    state_dir: Path
    job: str = "job"
    partition: int = 0
    retain: int = 3
    incremental: bool = True
    token: str = "aaaa0001"
    manifests: list[Manifest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.task = f"{TOPIC}-{self.partition}"
        self.prefix = task_prefix(self.job, self.task)
        directory = TaskDirectory(self.state_dir, self.job, self.task, self.token)
        self.state = TaskState(directory, self.storage, self.job, self.task, DigestCache(),
                               incremental=self.incremental)
        self.state.open(None)
        self.table = self.state.value_table("totals:acc", JSON_CODEC)
        self.retention = RetainedSnapshots(self.storage, self.prefix, self.retain,
                                           self.state.restorer.load_manifest, shared_grace_s=0)
        self.offset = 0

    def checkpoint(self, changes: dict[str, object]) -> Manifest:
        for key, value in changes.items():
            self.table.put(key, value)
        self.offset += len(changes)
        self.state.flush()
        n = len(self.manifests) + 1
        name = snapshot_name(n, self.token)
        local = self.state.snapshot_local(name)
        build = partial(Manifest, job=self.job, task=self.task, topic=TOPIC, partition=self.partition,
                        checkpoint_id=n, snapshot=name, worker="w1", created_at=time.time(),
                        source_offset=self.offset, lineage=self.retention.lineage_for_next())
        previous = self.manifests[-1] if self.manifests else None
        manifest = self.state.persist(local, build, previous).manifest
        self.manifests.append(manifest)
        self.retention.completed(manifest)
        self.state.directory.prune_snapshots(keep={name})
        return manifest

    def close(self) -> None:
        self.state.close()


def write_history(storage: CheckpointStorage, state_dir: Path, checkpoints: int = 4, keys: int = 2000,
                  changed: int = 20, **kwargs: object) -> TaskHistory:
    """`checkpoints` checkpoints: all `keys` first, then `changed` keys each time."""
    history = TaskHistory(storage, state_dir, **kwargs)
    history.checkpoint({f"user-{i}": {"sum": i} for i in range(keys)})
    for n in range(1, checkpoints):
        history.checkpoint({f"user-{(n * 7919 + i) % keys}": {"sum": -n} for i in range(changed)})
    history.close()
    return history
