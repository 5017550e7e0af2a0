"""One worker's share of a savepoint: its tasks' positions and state files.

Runs on the worker's loop thread once the worker is drained (sources paused, every
repartition partition read to its end, everything committed), so each task's RocksDB
holds exactly the state of its last committed checkpoint and its committed offset is
its position. Every state is written as canonical JSON lines into the savepoint
directory; the part (positions, files with sizes and checksums) goes back to the
client, which assembles the manifest from all workers' parts.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eos.errors import SavepointError
from service.eventtime.clock import is_clock_uid
from service.job.planner import Plan
from service.savepoints.schema import DeclaredState, declared_states, operator_of
from statestore.savepoint_data import write_state_file
from statestore.savepoint_manifest import (
    MAP_STATE,
    VALUE_STATE,
    OperatorState,
    PartitionPosition,
    StageLayout,
    StateFile,
    state_file_path,
)
from statestore.storage.base import CheckpointStorage
from statestore.tables import MapTable

log = logging.getLogger(__name__)


def stage_layouts(plan: Plan, partitions: dict[str, int]) -> list[StageLayout]:
    return [StageLayout(id=s.id, topic=s.topic, partitions=partitions[s.topic], repartition=s.repartition,
                        key_serde=s.key_serde.name, stateful_uids=tuple(s.stateful_uids))
            for s in plan.stages]


def write_part(*, plan: Plan, tasks: list[Any], worker: str, storage: CheckpointStorage, scratch: Path,
               partitions: dict[str, int], end_offsets: dict[tuple[str, int], int],
               on_file_written: Any = None) -> dict[str, Any]:
    """Writes the state files of `tasks`; returns the part as plain data."""
    began = time.monotonic()
    declared = declared_states(plan)
    positions: list[PartitionPosition] = []
    files: dict[tuple[str, str], list[StateFile]] = {}
    kinds: dict[tuple[str, str], tuple[str, str, str]] = {}
    undeclared: list[str] = []
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        for task in sorted(tasks, key=lambda t: (t.topic, t.partition)):
            for task_input in task.inputs:
                offset = task.completed.offset_of(task_input.topic, task.topic)
                positions.append(PartitionPosition(
                    stage=task.stage.id, topic=task_input.topic, partition=task.partition,
                    offset=offset if offset is not None and offset >= 0 else None,
                    checkpoint_id=task.completed.checkpoint_id,
                    end_offset=end_offsets.get(task_input.key), worker=worker,
                    watermark=task.watermark))
            if task.state is None:
                continue
            for cf in task.state.store.column_families:
                owner = operator_of(cf, task.stage.stateful_uids)
                if owner is not None and is_clock_uid(owner[0]):
                    continue  # time progress is per task, not per key: it travels in the positions
                kind_codec = _kind_and_codec(cf, task.state, declared.get(cf))
                if owner is None or kind_codec is None:
                    undeclared.append(f"{cf} (task {task.id})")
                    continue
                uid, name = owner
                kind, codec = kind_codec
                path = state_file_path(uid, name, task.partition)
                local = scratch / path
                written = write_state_file(task.state.store.items(cf), kind, codec, local)
                _upload(storage, path, local)
                files.setdefault((uid, name), []).append(
                    StateFile(path, task.partition, written.keys, written.size, written.sha256))
                kinds[(uid, name)] = (kind, codec, task.stage.id)
                if on_file_written is not None:
                    on_file_written(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    states = [OperatorState(uid, name, *kinds[(uid, name)], files=tuple(entries))
              for (uid, name), entries in sorted(files.items())]
    if undeclared:
        log.warning("savepoint leaves out state no operator of this job declares: %s", ", ".join(undeclared))
    keys = sum(s.keys for s in states)
    log.info("savepoint part of worker %s: %d tasks, %d states, %d keys written in %.2fs", worker,
             len(positions), len(states), keys, time.monotonic() - began)
    return {
        "worker": worker,
        "stages": [asdict(s) for s in stage_layouts(plan, partitions)],
        "positions": [asdict(p) for p in positions],
        "states": [asdict(s) for s in states],
        "undeclared": undeclared,
        "seconds": time.monotonic() - began,
    }


def _kind_and_codec(cf: str, task_state: Any, declared: DeclaredState | None) -> tuple[str, str] | None:
    table = task_state.tables.get(cf)
    if table is not None:
        return (MAP_STATE if isinstance(table, MapTable) else VALUE_STATE), table.codec.name
    if declared is not None:
        return declared.kind, declared.codec.name
    return None


def _upload(storage: CheckpointStorage, key: str, local: Path) -> None:
    try:
        storage.put_file(key, local)
    except OSError as exc:  # StorageError, or the file system refusing a directory
        raise SavepointError(f"cannot write savepoint file {storage.describe(key)}: {exc}") from exc
    finally:
        local.unlink(missing_ok=True)
