"""Savepoints taken by a worker, driven over its HTTP control API.

A savepoint of a job is taken by every worker of its group together, step by step, as
the client (`eos savepoint trigger|stop`) tells them:

  begin     pause the source partitions, commit a checkpoint of everything so far
  (drain)   keep reading repartition topics and committing until every repartition
            partition is read to its end (its last stable offset) and nothing is
            uncommitted; the worker reports `idle` and a progress token. A task of
            several inputs keeps its timestamp order throughout: what it buffered from
            a held source stays unprocessed (it lies past the task's committed
            offsets, so the job reads it again after the savepoint), and a task that
            also reads a repartition topic has its sources held only once that input
            is drained, since the records it drains may need theirs first
  write     (once the client saw every worker idle twice with unchanged progress)
            write each task's position and state into the savepoint directory
  finish    `trigger`: resume the sources; `stop`: exit 0
  cancel    any time before finish: resume the sources, nothing else changes

The savepoint's state is therefore exactly the state of the last committed checkpoint
of every task, with nothing in flight between stages. Commands arrive on HTTP threads
and are carried out on the worker's loop thread between batches (`tick`), so the
record path stays single-threaded and lock-free. A worker that hears nothing from the
client for `timeout_s` cancels on its own, so a vanished client never leaves a job
paused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from confluent_kafka import KafkaException, TopicPartition

from connectors.offsets import ClusterOffsets
from eos.errors import ConfigurationError, EosError, SavepointError
from service.job.planner import Plan
from service.savepoints.part import write_part
from service.web.routing import Request, Response, Router
from statestore.storage import S3Settings, open_storage

log = logging.getLogger(__name__)

DRAINING = "draining"
WRITING = "writing"
WRITTEN = "written"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
ACTIVE_PHASES = (DRAINING, WRITING, WRITTEN)

MODES = ("trigger", "stop")
# What fails a savepoint but not the worker; any other EosError raised on the way (a
# checkpoint failure beyond the tolerated, being replaced) fails both.
_SAVEPOINT_FAILURES = (SavepointError, ConfigurationError, KafkaException, OSError)
CHECK_EVERY_S = 0.05
# Why the sources are paused while a savepoint is taken (KafkaSource.hold).
SAVEPOINT_HOLD = "savepoint"
DEFAULT_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 120.0
# The worker loop's checkpoint: runs one and acts on its outcome; returns its record.
Checkpoint = Callable[[str], Any]


def savepoint_location(directory: str, savepoint_id: str) -> str:
    """The savepoint's own directory (file path or storage URL) under `directory`."""
    return f"{directory.rstrip('/')}/{savepoint_id}"


def default_savepoint_dir(checkpoint_storage: str, group: str) -> str:
    return f"{checkpoint_storage.rstrip('/')}/{group}/savepoints"


@dataclass
class _Command:
    name: str
    body: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 500
    reply: dict[str, Any] = field(default_factory=dict)

    def answer(self, status: int, reply: dict[str, Any]) -> None:
        self.status, self.reply = status, reply
        self.done.set()


class SavepointOperation:
    """One savepoint as seen by one worker; lives on the loop thread."""

    def __init__(self, control: SavepointControl, savepoint_id: str, directory: str, mode: str,
                 timeout_s: float) -> None:
        self.control = control
        self.id = savepoint_id
        self.directory = directory
        self.location = savepoint_location(directory, savepoint_id)
        self.mode = mode
        self.timeout_s = timeout_s
        self.phase = DRAINING
        self.error: str | None = None
        self.idle = False
        self.progress = ""
        self.part: dict[str, Any] | None = None
        self.last_contact = time.monotonic()
        self._next_check = 0.0
        self._assignment: dict[tuple[str, int], int] = {}
        self._paused: list[tuple[str, int]] = []

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    # -- steps ----------------------------------------------------------------------

    def begin(self, checkpoint: Checkpoint) -> None:
        manager = self.control.manager
        self._assignment = {key: id(task) for key, task in manager.tasks.items()}
        tasks = list(manager.tasks.values())
        self._hold_sources(tasks, self._undrained(tasks))
        log.info("savepoint %s (%s): sources paused (%d partitions), draining", self.id, self.mode,
                 len(self._paused))
        self._checkpoint(checkpoint)

    def step(self, checkpoint: Checkpoint) -> None:
        now = time.monotonic()
        if now - self.last_contact > self.timeout_s:
            self.cancel(f"no word from the savepoint client for {self.timeout_s:.0f}s")
            return
        if self.phase == WRITING:
            self._write()
            return
        if self.phase != DRAINING or now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        self._check_assignment()
        tasks = list(self.control.manager.tasks.values())
        undrained = self._undrained(tasks)
        self._hold_sources(tasks, undrained)
        if any(t.changed for t in tasks):
            self._checkpoint(checkpoint)
        self.idle = not any(t.changed for t in tasks) and not undrained
        self.progress = _progress_token(tasks)

    def request_write(self) -> None:
        if self.phase != DRAINING:
            raise SavepointError(f"savepoint {self.id} is {self.phase}, not draining")
        self._check_assignment()
        tasks = list(self.control.manager.tasks.values())
        if any(t.changed for t in tasks) or self._undrained(tasks):
            raise SavepointError(f"worker {self.control.worker_id} is not drained yet; ask again once it "
                                 "reports idle")
        self.phase = WRITING

    def finish(self) -> None:
        if self.phase != WRITTEN:
            raise SavepointError(f"savepoint {self.id} is {self.phase}; only a written savepoint can finish")
        self.phase = FINISHED
        if self.mode == "stop":
            log.info("savepoint %s complete: stopping (stop-with-savepoint)", self.id)
            self.control.request_stop()
        else:
            self._resume()
            log.info("savepoint %s complete: sources resumed", self.id)

    def cancel(self, reason: str) -> None:
        if not self.active:
            return
        self.phase, self.error = CANCELLED, reason
        self._resume()
        log.warning("savepoint %s cancelled: %s; sources resumed", self.id, reason)

    def fail(self, reason: str) -> None:
        if not self.active:
            log.warning("savepoint %s (%s): %s", self.id, self.phase, reason)
            return
        self._resume()
        self.phase, self.error = FAILED, reason
        log.error("savepoint %s failed: %s; sources resumed", self.id, reason)

    # -- helpers --------------------------------------------------------------------

    def _checkpoint(self, checkpoint: Checkpoint) -> None:
        record = checkpoint("savepoint")
        if record is not None and not record.outcome.committed:
            raise SavepointError(f"checkpoint {record.checkpoint_id} for savepoint {self.id} failed: {record.error}")

    def _check_assignment(self) -> None:
        now = {key: id(task) for key, task in self.control.manager.tasks.items()}
        if now != self._assignment:
            raise SavepointError("the group rebalanced while the savepoint was being taken (partitions "
                                 "moved between workers); take it again")

    def _hold_sources(self, tasks: list[Any], undrained: set[str]) -> None:
        """Holds the source partitions of every task whose repartition inputs are drained
        (all of them, for a task that reads none), and releases those of a task whose
        repartition input brought more since: its records may be earlier than what the
        sources still hold. Holding again each step also pauses a partition a rewind
        re-assigned."""
        held = [i.key for t in tasks if t.id not in undrained for i in t.inputs if not i.spec.repartition]
        source = self.control.manager.source
        freed = list(set(self._paused) - set(held))
        if freed:
            source.release(freed, SAVEPOINT_HOLD)
        if held:
            source.hold(held, SAVEPOINT_HOLD)
        self._paused = held

    def _resume(self) -> None:
        if not self._paused:
            return
        manager = self.control.manager
        try:
            manager.source.release([key for key in self._paused if key in manager.routes], SAVEPOINT_HOLD)
        except KafkaException as exc:
            log.warning("resuming source partitions after savepoint %s: %s", self.id, exc)
        self._paused = []

    def _undrained(self, tasks: list[Any]) -> set[str]:
        """The tasks with a repartition input not yet drained: records of it buffered, or
        its partition not read to the end of its log (the consumer's position counts the
        transaction markers it skipped). Not to the last stable offset: right after the
        upstream commit it may not yet pass the records that commit made visible."""
        repartition = [(t, i) for t in tasks for i in t.inputs if i.spec.repartition]
        undrained = {t.id for t, i in repartition if i.buffer}
        reading = [(t, i) for t, i in repartition if t.id not in undrained]
        if not reading:
            return undrained
        partitions = [TopicPartition(i.topic, i.partition) for _, i in reading]
        positions = self.control.consumer.position(partitions)
        ends = self.control.offsets.written_ends(partitions)
        starts = None
        for (task, task_input), position in zip(reading, positions):
            at = max(position.offset, task_input.next_offset if task_input.next_offset is not None else -1)
            if at < 0:  # never read: drained only if there is nothing to read
                starts = starts or self.control.offsets.starts(partitions)
                at = starts[task_input.key]
            if at < ends[task_input.key]:
                undrained.add(task.id)
        return undrained

    def _write(self) -> None:
        control = self.control
        tasks = list(control.manager.tasks.values())
        partitions = control.offsets.partition_counts([s.topic for s in control.plan.stages])
        end_offsets = control.offsets.ends([TopicPartition(i.topic, i.partition) for t in tasks for i in t.inputs])
        storage = _torn_on_first_file(open_storage(self.location, control.s3))
        part = write_part(plan=control.plan, tasks=tasks, worker=control.worker_id, storage=storage,
                          scratch=control.scratch_dir / self.id, partitions=partitions,
                          end_offsets=end_offsets, on_file_written=_fault_hook())
        part.update(job=control.job_name, group=control.group, params=control.params)
        self.part = part
        self.phase = WRITTEN

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "mode": self.mode, "phase": self.phase, "location": self.location,
                "idle": self.idle, "progress": self.progress, "error": self.error, "part": self.part}


class SavepointControl:
    """The worker's savepoint endpoint: HTTP threads queue commands, the loop runs them."""

    def __init__(self, *, worker_id: str, group: str, job_name: str, params: dict[str, str],
                 default_dir: str, scratch_dir: Path, request_stop: Callable[[], None],
                 s3: S3Settings | None = None) -> None:
        self.worker_id, self.group, self.job_name, self.params = worker_id, group, job_name, dict(params)
        self.default_dir = default_dir
        self.s3 = s3
        self.scratch_dir = scratch_dir
        self.request_stop = request_stop
        self.plan: Plan | None = None
        self.manager: Any = None
        self.consumer: Any = None
        self.partition_counts: dict[str, int] = {}
        self.offsets: ClusterOffsets | None = None
        self._inbox: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._operation: SavepointOperation | None = None
        # Replaced whole by the loop thread, read by HTTP threads.
        self.published: dict[str, Any] | None = None

    def attach(self, plan: Plan, manager: Any, consumer: Any, partition_counts: dict[str, int],
               offsets: ClusterOffsets) -> None:
        self.plan, self.manager, self.consumer, self.offsets = plan, manager, consumer, offsets
        self.partition_counts = {s.topic: partition_counts[s.topic] for s in plan.stages}

    # -- HTTP threads ---------------------------------------------------------------

    def add_routes(self, router: Router) -> None:
        router.add("GET", "/savepoints", self._get, control=True)
        router.add("POST", "/savepoints", lambda r: self._post("begin", r), control=True)
        router.add("POST", "/savepoints/write", lambda r: self._post("write", r), control=True)
        router.add("POST", "/savepoints/finish", lambda r: self._post("finish", r), control=True)
        router.add("POST", "/savepoints/cancel", lambda r: self._post("cancel", r), control=True)

    def _identity(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "group": self.group, "job": self.job_name,
                "savepoint_dir": self.default_dir, "topics": self.partition_counts,
                "assignment": self._assignment()}

    def _assignment(self) -> list[list[Any]]:
        """The worker's partitions, read from an HTTP thread while the loop may change
        them: a copy, retried if a rebalance resized the dict meanwhile."""
        if self.manager is None:
            return []
        for _ in range(5):
            try:
                return [[topic, partition] for topic, partition in sorted(list(self.manager.tasks))]
            except RuntimeError:
                continue
        return []

    def _get(self, request: Request) -> Response:
        wanted = parse_qs(request.query).get("id", [None])[0]
        operation = self._operation
        if operation is not None and (wanted is None or operation.id == wanted):
            operation.last_contact = time.monotonic()
        published = self.published
        if wanted is not None and (published is None or published.get("id") != wanted):
            return Response.json(404, {**self._identity(), "error": f"no savepoint {wanted} on this worker"})
        return Response.json(200, {**self._identity(), "savepoint": published})

    def _post(self, name: str, request: Request) -> Response:
        if self.manager is None or not getattr(self.manager, "ready", False):
            return Response.json(503, {**self._identity(), "error": "the worker is still starting"})
        try:
            body = orjson.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return Response.json(400, {"error": f"request body must be a JSON object ({exc})"})
        command = _Command(name, body)
        self._inbox.put(command)
        if not command.done.wait(REPLY_TIMEOUT_S):
            return Response.json(504, {"error": f"the worker did not take up {name!r} within {REPLY_TIMEOUT_S:.0f}s"})
        return Response.json(command.status, {**self._identity(), **command.reply})

    # -- loop thread ----------------------------------------------------------------

    def tick(self, loop: Any) -> None:
        """Called by the loop once per pass, with itself: costs one queue check while
        nothing happens. Checkpoints the savepoint needs are the loop's, so their
        outcomes are acted on where every other outcome is."""
        if self._operation is None and self._inbox.empty():
            return
        while not self._inbox.empty():
            self._handle(self._inbox.get_nowait(), loop.checkpoint)
        operation = self._operation
        if operation is not None and operation.active:
            try:
                operation.step(loop.checkpoint)
            except _SAVEPOINT_FAILURES as exc:
                operation.fail(str(exc))
            except EosError as exc:  # the worker's own failure (checkpoints failing, fenced)
                operation.fail(str(exc))
                self._publish()
                raise
            self._publish()

    def _handle(self, command: _Command, checkpoint: Checkpoint) -> None:
        worker_failure: EosError | None = None
        try:
            if command.name == "begin":
                status, reply = self._begin(command.body, checkpoint)
            else:
                status, reply = self._follow_up(command.name, command.body)
        except (*_SAVEPOINT_FAILURES, EosError) as exc:
            if self._operation is not None:
                self._operation.fail(str(exc))
            status, reply = 409, {"error": str(exc)}
            if isinstance(exc, EosError) and not isinstance(exc, _SAVEPOINT_FAILURES):
                worker_failure = exc
        self._publish()
        if self._operation is not None:
            reply.setdefault("savepoint", self.published)
        command.answer(status, reply)
        if worker_failure is not None:
            raise worker_failure

    def _begin(self, body: dict[str, Any], checkpoint: Checkpoint) -> tuple[int, dict[str, Any]]:
        current = self._operation
        if current is not None and current.active:
            return 409, {"error": f"savepoint {current.id} is in progress ({current.phase})"}
        savepoint_id, mode = body.get("id"), body.get("mode", "trigger")
        if not isinstance(savepoint_id, str) or not savepoint_id or "/" in savepoint_id:
            return 400, {"error": "a savepoint needs an id without '/'"}
        if mode not in MODES:
            return 400, {"error": f"mode must be one of {', '.join(MODES)}, not {mode!r}"}
        directory = body.get("target") or self.default_dir
        try:
            timeout_s = float(body.get("timeout_s") or DEFAULT_TIMEOUT_S)
        except (TypeError, ValueError):
            return 400, {"error": f"timeout_s must be a number of seconds, not {body.get('timeout_s')!r}"}
        if not isinstance(directory, str) or timeout_s <= 0:
            return 400, {"error": "target must be a directory path or URL, and timeout_s positive"}
        self._operation = SavepointOperation(self, savepoint_id, directory, mode, timeout_s)
        self._operation.begin(checkpoint)
        return 202, {}

    def _follow_up(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        operation = self._operation
        if operation is None or operation.id != body.get("id"):
            return 404, {"error": f"no savepoint {body.get('id')} on this worker"}
        operation.last_contact = time.monotonic()
        if name == "write":
            operation.request_write()
            return 202, {}
        if name == "finish":
            operation.finish()
            return 200, {}
        operation.cancel(str(body.get("reason") or "cancelled by the client"))
        return 200, {}

    def _publish(self) -> None:
        operation = self._operation
        self.published = operation.status() if operation is not None else None

    @property
    def stopped_by_savepoint(self) -> str | None:
        """The id of the savepoint this worker stopped with (stop-with-savepoint), if any."""
        operation = self._operation
        if operation is not None and operation.mode == "stop" and operation.phase == FINISHED:
            return operation.id
        return None

    def cancel_on_exit(self, reason: str) -> None:
        if self._operation is not None and self._operation.active:
            self._operation.fail(reason)
            self._publish()


def _progress_token(tasks: list[Any]) -> str:
    """Changes whenever any task reads a record or commits a checkpoint."""
    parts = sorted(f"{t.id}:{[i.next_offset for i in t.inputs]}:{t.completed.checkpoint_id}:"
                   f"{t.records_since_checkpoint}" for t in tasks)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _torn_on_first_file(storage: Any) -> Any:
    """Test-only: EOS_SAVEPOINT_FAULT=mid_file SIGKILLs the worker halfway through its
    first savepoint file, leaving the file system's temporary file of that write."""
    if os.environ.get("EOS_SAVEPOINT_FAULT") != "mid_file":
        return storage

    def put_file(key: str, source: Path) -> None:
        def half_then_die(dst: Any) -> None:
            data = source.read_bytes()
            dst.write(data[: len(data) // 2])
            dst.flush()
            log.warning("fault injection: killing this worker while writing a savepoint (halfway through %s)", key)
            os.kill(os.getpid(), signal.SIGKILL)

        storage._write(key, half_then_die)

    storage.put_file = put_file
    return storage


def _fault_hook() -> Callable[[str], None] | None:
    """Test-only: EOS_SAVEPOINT_FAULT=mid_write SIGKILLs the worker after its first
    savepoint file is written, leaving a savepoint without its manifest."""
    if os.environ.get("EOS_SAVEPOINT_FAULT") != "mid_write":
        return None

    def kill(path: str) -> None:
        log.warning("fault injection: killing this worker while writing a savepoint (after %s)", path)
        os.kill(os.getpid(), signal.SIGKILL)

    return kill
