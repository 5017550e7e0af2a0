"""Everything a worker shows about itself: the status snapshots it publishes, the
librdkafka statistics that give consumer lag and records out, and the HTTP server.

The worker's loop calls `tick()` once per pass (a clock read and a comparison) and
`publish()` after checkpoints; a snapshot is built at most every PUBLISH_EVERY_S.
With no `--http-port` there is no server and no client statistics: the remaining
cost is the per-batch and per-checkpoint metric updates, which stay regardless.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from connectors.kafka_waits import KafkaWaits
from service.monitoring.kafka_stats import ConsumerLag, RecordsOut
from service.monitoring.metrics import WorkerMetrics
from service.monitoring.status import (
    RUNNING,
    STARTING,
    CheckpointStatus,
    StatusBoard,
    TaskStatus,
    WorkerStatus,
)
from service.runtime.config import WorkerConfig
from service.monitoring.job_status import JobView
from service.web.endpoints import add_worker_pages
from service.web.job_pages import add_job_pages
from service.web.routing import ControlAccess, Router
from service.web.server import HttpServer

if TYPE_CHECKING:
    from service.checkpointing.coordinator import CheckpointCoordinator, CheckpointRecord
    from service.runtime.task_manager import TaskManager

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 0.5


def checkpoint_status(record: "CheckpointRecord") -> CheckpointStatus:
    phase = record.phase.value
    result = phase if phase in ("committed", "failed") else f"in progress: {phase}"
    return CheckpointStatus(record.checkpoint_id, record.reason, record.started_at, record.duration_s,
                            record.tasks, record.size_bytes, record.uploaded_bytes, record.state_keys,
                            result, record.error, counted=record.error is not None and record.outcome.counts)


class WorkerMonitor:
    def __init__(self, config: WorkerConfig, group: str, job_name: str, metrics: WorkerMetrics) -> None:
        self.config = config
        self.group = group
        self.job_name = job_name
        self.metrics = metrics
        self.started_at = time.time()
        self.router = Router(ControlAccess(config.control_token, config.control_allow))
        self.server: HttpServer | None = None
        self.manager: TaskManager | None = None
        self.coordinator: CheckpointCoordinator | None = None
        self.lag: ConsumerLag | None = None
        self.records_out: RecordsOut | None = None
        self.records_in = 0
        self.base_restarts = 0
        self.state = STARTING
        self.last_error: tuple[float, str] | None = None
        self._next_publish = 0.0
        self.board = StatusBoard(self._status(STARTING), stall_after_s=max(120.0, 3 * config.checkpoint_timeout_s))
        # Given to the Kafka clients, so /healthz sees a loop held up by an absent cluster.
        self.kafka_waits = KafkaWaits()
        self.board.kafka_blocked = self.kafka_waits.blocked_for

    # -- set-up ---------------------------------------------------------------------

    def start_server(self) -> None:
        """Serves /, /metrics and /healthz from now on (503 until recovery finishes)."""
        if not self.config.monitoring:
            return
        add_worker_pages(self.router, self.board, self.metrics.registry, self.in_progress)
        add_job_pages(self.router, JobView(
            self.group, {"bootstrap.servers": self.config.bootstrap_servers, **self.config.kafka_config},
            own_worker=self.config.worker_id, own_status=lambda: self.board.current))
        self.server = HttpServer(self.config.http_host, self.config.http_port, self.router).start()
        log.info("status page %s, job page %s, metrics %s (advertised at %s)", self.server.url("/"),
                 self.server.url("/job"), self.server.url("/metrics"), ", ".join(self.advertised_urls()))

    def advertised_urls(self) -> tuple[str, ...]:
        """Where other workers and clients reach this worker's HTTP port, in order: the
        configured addresses, else the bound address (this machine's name when bound to
        every interface). None without a server."""
        if self.server is None:
            return ()
        if self.config.http_advertised_urls:
            return tuple(u.rstrip("/") for u in self.config.http_advertised_urls)
        if self.server.host in ("0.0.0.0", "::", ""):
            return (f"http://{socket.gethostname()}:{self.server.port}",)
        return (self.server.url("").rstrip("/"),)

    def consumer_settings(self, positions: Any) -> dict[str, Any]:
        if not self.config.monitoring:
            return {}
        self.lag = ConsumerLag(self.metrics, positions)
        # /healthz turns 503 while the consumer reaches no broker (see BrokerReachability).
        self.board.kafka_unreachable = self.lag.brokers.unreachable_for
        self.board.out_of_group = self.lag.brokers.out_of_group_for
        return {"statistics.interval.ms": self.config.stats_interval_ms, "stats_cb": self.lag}

    def producer_settings(self) -> dict[str, Any]:
        if not self.config.monitoring:
            return {}
        self.records_out = RecordsOut(self.metrics)
        return {"statistics.interval.ms": self.config.stats_interval_ms, "stats_cb": self.records_out}

    def count_restarts(self, restarts: int) -> None:
        """Restarts of this worker slot before this process (see incarnation.py)."""
        self.base_restarts = restarts
        if restarts:
            self.metrics.labels(self.metrics.restarts).inc(restarts)

    def attach(self, manager: "TaskManager", coordinator: "CheckpointCoordinator") -> None:
        self.manager, self.coordinator = manager, coordinator

    # -- called by the worker's loop --------------------------------------------------

    def tick(self) -> None:
        if self.server is None:
            return
        now = time.monotonic()
        self.board.heartbeat = now
        if now >= self._next_publish:
            self.publish()

    def note_error(self, message: str) -> None:
        self.last_error = (time.time(), message)

    def set_state(self, state: str, error: str | None = None) -> None:
        self.state = state
        if error:
            self.note_error(error)
        self.publish()

    def publish(self) -> None:
        if not self.config.monitoring:
            return
        self._next_publish = time.monotonic() + PUBLISH_EVERY_S
        status = self._status(self.state)
        self.board.publish(status)
        # Restored tasks carry their checkpoint id: a restarted worker shows it before
        # its own first checkpoint completes.
        self.metrics.labels(self.metrics.last_checkpoint_id).set(status.last_checkpoint_id)

    # -- read by HTTP threads ---------------------------------------------------------

    def in_progress(self) -> CheckpointStatus | None:
        coordinator = self.coordinator
        record = coordinator.current if coordinator is not None else None
        return checkpoint_status(record) if record is not None else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- snapshots ----------------------------------------------------------------------

    def _status(self, state: str) -> WorkerStatus:
        c = self.config
        manager, coordinator = self.manager, self.coordinator
        tasks: tuple[TaskStatus, ...] = ()
        checkpoints: tuple[CheckpointStatus, ...] = ()
        last_id, rewinds = 0, 0
        if manager is not None:
            lag = self.lag.lag if self.lag is not None else {}
            tasks = tuple(TaskStatus(t.id, t.stage.id, t.topic, t.partition, t.stateful, t.next_offset,
                                     t.completed.checkpoint_id, lag.get((t.topic, t.partition)))
                          for t in list(manager.tasks.values()))
            last_id = max([t.checkpoint_id for t in tasks], default=0)
            rewinds = manager.rewinds
        if coordinator is not None:
            checkpoints = tuple(checkpoint_status(r) for r in reversed(coordinator.history)
                                if r is not coordinator.current)
            last_id = max(last_id, coordinator.last_id)
        error = self.last_error
        return WorkerStatus(
            job=self.job_name, group=self.group, worker=c.worker_id, state=state,
            ready=bool(manager is not None and manager.ready and state == RUNNING),
            started_at=self.started_at, published_at=time.time(),
            processing_guarantee=c.processing_guarantee, checkpoint_interval_s=c.checkpoint_interval_s,
            checkpoint_storage=c.checkpoint_storage, last_checkpoint_id=last_id, tasks=tasks,
            checkpoints=checkpoints, records_in=self.records_in,
            records_out=self.records_out.total if self.records_out is not None else 0,
            restarts=self.base_restarts + rewinds,
            last_error=error[1] if error else None, last_error_at=error[0] if error else None)
