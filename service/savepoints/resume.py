"""`eos run --from-savepoint PATH`: checks before any record is read, then the state and
position of each task from the savepoint, exactly once.

Before the worker joins its group it reads the manifest (digest, format version), checks
that the savepoint belongs to this job, that every operator state in it has an operator
to go to (unless `--allow-non-restored-state`), verifies every file's size and SHA-256,
and checks the group's committed offsets (see `check_group_history`). Any problem is a
SavepointError naming the savepoint, file, operator or partition, and nothing has been
read or committed.

Applying once: the first checkpoint after a restore commits each task's offset with
metadata naming the savepoint (`eos1:{checkpoint}:{snapshot}:{savepoint}`), and every
later checkpoint keeps naming it. A task whose committed offset names this savepoint
continues from its checkpoints; any other task is restored from the savepoint. So a
worker restarted with the same command line (a container restart) never goes back.

Rescale: a state's file of partition p is read as is when the stage still has the same
partition count and key hashing; otherwise every file of that state is read and each
key kept by the task `murmur2(kafka key bytes) % partitions` names, where the Kafka key
bytes are the stable key encoding (repartition stages) or the source's key serde applied
to the key (stages keyed by the record key).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from connectors.serdes import BYTES, KEY
from eos.errors import SavepointError
from service.checkpointing.recovery import Restored, parse_metadata
from service.eventtime.clock import FLOOR, clock_state, savepoint_floor
from service.job.planner import Plan, Stage, StageInput
from service.runtime.task import CompletedCheckpoint, Task
from service.savepoints.schema import declared_states
from statestore.codecs import JSON_CODEC
from statestore.keys import decode_key, encode_key
from statestore.murmur2 import partition_for
from statestore.savepoint_data import (
    LineWriter,
    check_file,
    parse_line,
    read_lines,
    read_state_file,
    rocksdb_key,
    value_encoder,
)
from statestore.savepoint_manifest import MANIFEST_NAME, OperatorState, SavepointManifest, StateFile
from statestore.storage import FileStorage, S3Settings, open_storage
from statestore.storage.base import CheckpointStorage, ObjectNotFound, StorageError

log = logging.getLogger(__name__)

WRITE_BATCH = 50_000

RestoreFn = Callable[..., Restored]


def open_savepoint(location: str, s3: S3Settings | None = None) -> tuple[SavepointManifest, CheckpointStorage]:
    """The manifest of the savepoint at `location` (a path or storage URL). A missing
    location, a directory without a manifest (an unfinished savepoint) and a damaged
    or foreign manifest are each a clear SavepointError."""
    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://"))
        if not path.is_dir():
            raise SavepointError(f"savepoint {location} does not exist (no such directory)")
    try:
        storage = open_storage(location, s3)
        data = storage.get_bytes(MANIFEST_NAME)
    except ObjectNotFound:
        try:
            anything = bool(storage.list("")) or bool(storage.list_unfinished(""))
        except StorageError:
            anything = False
        if anything:
            raise SavepointError(
                f"{location} is not a complete savepoint: its manifest {MANIFEST_NAME} is missing, so it was "
                "never finished (a savepoint interrupted while being written is never usable)") from None
        raise SavepointError(f"savepoint {location} does not exist (no {MANIFEST_NAME} there)") from None
    except StorageError as exc:
        raise SavepointError(f"cannot read savepoint {location}: {exc}") from exc
    return SavepointManifest.from_bytes(data, storage.describe(MANIFEST_NAME)), storage


class SavepointFiles:
    """Local paths of a savepoint's files: the files themselves on a file system,
    downloaded copies (once) from other storage."""

    def __init__(self, storage: CheckpointStorage, cache_dir: Path) -> None:
        self.storage = storage
        self.cache_dir = cache_dir

    def where(self, entry: StateFile) -> str:
        return self.storage.describe(entry.path)

    def local(self, entry: StateFile) -> Path:
        if isinstance(self.storage, FileStorage):
            return Path(self.storage.describe(entry.path))
        target = self.cache_dir / entry.path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.storage.get_file(entry.path, target)
            except ObjectNotFound:
                raise SavepointError(f"savepoint file {self.where(entry)} is missing; the savepoint is damaged") from None
            except StorageError as exc:
                raise SavepointError(f"cannot read savepoint file {self.where(entry)}: {exc}") from exc
        return target


class SavepointResume:
    def __init__(self, location: str, manifest: SavepointManifest, files: SavepointFiles, plan: Plan) -> None:
        self.location = location
        self.manifest = manifest
        self.files = files
        self.plan = plan
        self.declared = declared_states(plan)
        self.partition_counts: dict[str, int] = {}
        self._warned_topics: set[str] = set()
        self._splits: dict[tuple[str, str, int], dict[int, tuple[Path, StateFile]]] = {}

    @classmethod
    def open(cls, location: str, plan: Plan, *, allow_non_restored_state: bool, cache_dir: Path,
             s3: S3Settings | None = None) -> SavepointResume:
        manifest, storage = open_savepoint(location, s3)
        shutil.rmtree(cache_dir, ignore_errors=True)  # copies and splits of an earlier start
        resume = cls(location, manifest, SavepointFiles(storage, cache_dir), plan)
        resume._check_job()
        resume._check_operators(allow_non_restored_state)
        resume._verify_files()
        return resume

    # -- checks before anything is read ------------------------------------------------

    def _check_job(self) -> None:
        if self.manifest.job != self.plan.job.name:
            raise SavepointError(
                f"savepoint {self.location} was taken of job {self.manifest.job!r} (group {self.manifest.group!r}), "
                f"not of {self.plan.job.name!r}; resume it with the job it belongs to")

    def _check_operators(self, allow_non_restored_state: bool) -> None:
        current = {uid for stage in self.plan.stages for uid in stage.stateful_uids}
        orphans = [s for s in self.manifest.states if s.uid not in current]
        if not orphans:
            return
        names = ", ".join(f"{s.uid!r} (state {s.name!r}, {s.keys} keys)" for s in orphans)
        if not allow_non_restored_state:
            raise SavepointError(
                f"savepoint {self.location} holds state of operator(s) {names} that job {self.plan.job.name!r} no "
                "longer has; resuming would drop it. Pass --allow-non-restored-state to resume without it, or "
                "keep the operator (same uid).")
        log.warning("resuming from savepoint %s without the state of removed operator(s) %s "
                    "(--allow-non-restored-state)", self.location, names)

    def _verify_files(self) -> None:
        began = time.monotonic()
        for entry in self.manifest.files():
            check_file(self.files.local(entry), entry, self.files.where(entry))
        log.info("savepoint %s (%s, job %s, group %s): %d files, %d keys verified in %.2fs", self.manifest.id,
                 self.manifest.kind, self.manifest.job, self.manifest.group, len(self.manifest.files()),
                 self.manifest.total_keys, time.monotonic() - began)

    def check_group_history(self, settled_commits: Callable[[list[TopicPartition]], list[TopicPartition]],
                            partition_counts: dict[str, int]) -> None:
        """Resuming a job with repartition topics is safe only where those topics hold
        nothing from another history: in the group the savepoint was taken from, if the
        group has not moved on since (its committed offsets are the savepoint's, as after
        stop-with-savepoint), or in a group without a history of its own. The group's
        completed commits are what count (`settled_commits`): this runs before the slot's
        transactional ids are initialised, which is what ends a transaction a killed
        predecessor left open with offsets of the group in it."""
        self.partition_counts = dict(partition_counts)
        if not self.plan.repartition_stages:
            return  # no topic between stages: offsets and state are all that matter
        partitions = [TopicPartition(t, p) for t in self.plan.all_input_topics for p in range(partition_counts[t])]
        committed = settled_commits(partitions)
        same_group = self.manifest.group == self.plan.group
        for tp in committed:
            if tp.offset < 0:
                continue
            reference = parse_metadata(tp.metadata)
            if reference is not None and getattr(reference, "savepoint", None) == self.manifest.id:
                continue
            where = f"topic {tp.topic!r} partition {tp.partition}"
            if same_group:
                saved = self.manifest.position(tp.topic, tp.partition)
                if saved is not None and saved.offset == tp.offset:
                    continue
                raise SavepointError(
                    f"group {self.plan.group!r} has moved on since savepoint {self.manifest.id} was taken: {where} "
                    f"is committed at offset {tp.offset}, the savepoint has "
                    f"{'no position' if saved is None or saved.offset is None else saved.offset} there. Its "
                    "repartition topics hold records of that later history; resume into a new --group.")
            raise SavepointError(
                f"group {self.plan.group!r} already has a history of its own ({where} is committed at offset "
                f"{tp.offset}, not from savepoint {self.manifest.id}); resume into a new --group or into the "
                f"savepoint's group {self.manifest.group!r}.")

    # -- restoring tasks -----------------------------------------------------------------

    def restore_fn(self, fallback: RestoreFn) -> RestoreFn:
        """`restore_task` with the savepoint applied to tasks whose history does not
        already descend from it."""

        def restore(task: Task, committed: TopicPartition, *args: Any, **kwargs: Any) -> Restored:
            reference = parse_metadata(committed.metadata) if committed.offset >= 0 else None
            if reference is not None and getattr(reference, "savepoint", None) == self.manifest.id:
                return fallback(task, committed, *args, **kwargs)
            return self.restore(task, reference.checkpoint_id if reference is not None else 0)

        return restore

    def restore(self, task: Task, committed_checkpoint_id: int) -> Restored:
        began = time.monotonic()
        keys = 0
        if task.state is not None:
            task.state.open(None)
            keys = self._load_state(task)
            if task.time is not None:
                self._start_clock(task)
        offset = self._offset(task, task.lead.spec)
        saved = self.manifest.position(task.topic, task.partition)
        checkpoint_id = max(committed_checkpoint_id, saved.checkpoint_id if saved is not None else 0)
        others = tuple((i.topic, self._offset(task, i.spec)) for i in task.others)
        completed = CompletedCheckpoint(checkpoint_id, offset, None, savepoint=self.manifest.id,
                                        uncommitted=offset is not None and offset >= 0, other_offsets=others)
        elapsed = time.monotonic() - began
        log.info("restored %s from savepoint %s in %.3fs: %d keys, from offset %s", task.id, self.manifest.id,
                 elapsed, keys, "beginning" if offset == OFFSET_BEGINNING else offset)
        return Restored(completed, None, elapsed)

    def _offset(self, task: Task, stage_input: StageInput) -> int | None:
        """The savepoint's position of one input partition of the task; partitions it
        does not know start from the beginning (new partitions, or another group's
        repartition topic)."""
        topic = stage_input.topic
        if stage_input.repartition and self.manifest.group != self.plan.group:
            return OFFSET_BEGINNING
        if not stage_input.repartition and not any(p.topic == topic for p in self.manifest.positions):
            if topic not in self._warned_topics:
                self._warned_topics.add(topic)
                log.warning("savepoint %s has no positions for topic %r (the job reads another topic now); "
                            "its partitions start by the reset policy", self.manifest.id, topic)
            return None
        saved = self.manifest.position(topic, task.partition)
        if saved is None or saved.offset is None:
            return OFFSET_BEGINNING
        return saved.offset

    def _start_clock(self, task: Task) -> None:
        """A task on event time starts at its stage's floor in the savepoint, so its
        windows do not take records for windows closed before the savepoint."""
        floor = savepoint_floor([p.watermark for p in self.manifest.positions if p.stage == task.stage.id])
        if floor is None:
            return
        cf = clock_state(task.stage.id)
        task.state.store.ensure_column_family(cf)
        task.state.store.write([(cf, encode_key(FLOOR), JSON_CODEC.encode(floor))])

    def _load_state(self, task: Task) -> int:
        store = task.state.store
        count = 0
        partitions = self.partition_counts.get(task.topic)
        for state in self.manifest.states:
            if state.uid not in task.stage.stateful_uids:
                continue
            files = self._files_for(state, task.stage, task.partition, partitions)
            declared = self.declared.get(state.column_family)
            what = f"state {state.column_family!r} of savepoint {self.manifest.id}"
            encode_value = value_encoder(state.codec, declared.codec if declared is not None else None, what)
            store.ensure_column_family(state.column_family)
            batch: list[tuple[str, bytes, bytes | None]] = []
            cf = state.column_family
            for path, entry, where in files:
                for key, map_key, obj in read_state_file(path, entry, where, state.kind):
                    batch.append((cf, rocksdb_key(key, map_key), encode_value(obj)))
                    if len(batch) >= WRITE_BATCH:
                        count += store.write(batch)
                        batch = []
            count += store.write(batch)
        return count

    def _files_for(self, state: OperatorState, stage: Stage, partition: int,
                   partitions: int | None) -> list[tuple[Path, StateFile, str]]:
        """The files holding this partition's keys: the partition's own file when the
        layout is unchanged, else its share of a split of all the state's files."""
        saved = self.manifest.stage(state.stage)
        if partitions is None:
            raise SavepointError(f"the partition count of topic {stage.topic!r} is unknown; cannot place "
                                 f"state {state.column_family!r}")
        same_layout = (saved is not None and saved.partitions == partitions
                       and saved.repartition == stage.repartition and saved.key_serde == stage.key_serde.name)
        if same_layout:
            return [(self.files.local(f), f, self.files.where(f)) for f in state.files if f.partition == partition]
        path, entry = self._split(state, stage, partitions)[partition]
        return [(path, entry, str(path))]

    def _split(self, state: OperatorState, stage: Stage, partitions: int) -> dict[int, tuple[Path, StateFile]]:
        """Re-hashes every key of a state once into one local file per new partition, so
        a rescale reads the savepoint once per worker, not once per task."""
        cache_key = (state.column_family, stage.id, partitions)
        split = self._splits.get(cache_key)
        if split is not None:
            return split
        began = time.monotonic()
        to_kafka_key = kafka_key_bytes(stage)
        directory = self.files.cache_dir / "split" / quote(state.column_family, safe="") / str(partitions)
        writers = {p: LineWriter(directory / f"part-{p:05d}.jsonl") for p in range(partitions)}
        for entry in state.files:
            where = self.files.where(entry)
            for line in read_lines(self.files.local(entry), entry, where):
                key, _, _ = parse_line(line, state.kind, where)
                writers[partition_for(to_kafka_key(key), partitions)].add(line)
        split = self._splits[cache_key] = {p: (w.path, w.close(p)) for p, w in writers.items()}
        log.info("savepoint %s: state %r re-hashed from %d files into %d partitions in %.2fs", self.manifest.id,
                 state.column_family, len(state.files), partitions, time.monotonic() - began)
        return split


def kafka_key_bytes(stage: Stage) -> Callable[[bytes], bytes]:
    """From a state key's stable encoding to the Kafka key bytes its records carry."""
    if stage.repartition or stage.key_serde is KEY:
        return lambda key: key
    serde = stage.key_serde
    if serde is BYTES:
        return lambda key: key[1:] if key[:1] == b"\x00" else b""  # raw keys; None has no bytes

    def serialize(key: bytes) -> bytes:
        value = decode_key(key)
        data = serde.serialize(value)
        return data if data is not None else b""

    return serialize
