"""What a worker shows about itself: immutable snapshots of plain data.

The worker's loop builds a `WorkerStatus` a few times a second and after every
checkpoint, and publishes it by replacing one reference on the `StatusBoard`. The HTTP
threads only ever read that reference, so they need no lock and the loop never waits
for a reader: a reader sees one consistent snapshot, at most a fraction of a second old.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

STARTING = "starting"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"
FAILED = "failed"


@dataclass(frozen=True)
class TaskStatus:
    task: str
    stage: str
    topic: str
    partition: int
    stateful: bool
    position: int | None  # next offset this worker processes; None before the first record
    checkpoint_id: int  # its last completed checkpoint
    lag: int | None


@dataclass(frozen=True)
class CheckpointStatus:
    checkpoint_id: int
    reason: str
    started_at: float  # epoch seconds
    duration_s: float
    tasks: int
    size_bytes: int
    uploaded_bytes: int
    state_keys: int
    result: str  # committed | failed | in progress (phase name)
    error: str | None
    # Failed in a way that counts toward --tolerable-failures (not a rebalance under it).
    counted: bool = False


@dataclass(frozen=True)
class WorkerStatus:
    job: str
    group: str
    worker: str
    state: str
    ready: bool
    started_at: float
    published_at: float
    processing_guarantee: str
    checkpoint_interval_s: float
    checkpoint_storage: str
    last_checkpoint_id: int = 0
    tasks: tuple[TaskStatus, ...] = ()
    checkpoints: tuple[CheckpointStatus, ...] = ()  # newest first
    records_in: int = 0
    records_out: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    @property
    def failing_checkpoints(self) -> int:
        """Checkpoints failed in a row, newest first, that count toward the tolerated."""
        failed = 0
        for checkpoint in self.checkpoints:
            if checkpoint.result == "committed":
                break
            failed += checkpoint.counted
        return failed


# /healthz turns 503 once this many checkpoints in a row failed (storage out of reach,
# say): one alone is a hiccup the worker rewinds from.
FAILING_CHECKPOINTS_UNHEALTHY = 2


@dataclass
class StatusBoard:
    """Holds the latest snapshot and the loop's heartbeat. Written only by the worker's
    loop thread; both attributes are single references, replaced atomically."""

    current: WorkerStatus
    heartbeat: float = field(default_factory=time.monotonic)  # monotonic time of the last loop pass
    stall_after_s: float = 120.0
    # How long Kafka has been out of reach (seconds), or None; see kafka_stats.BrokerReachability.
    kafka_unreachable: Callable[[float], float | None] = field(default=lambda now: None)
    kafka_grace_s: float = 3.0
    # The blocking Kafka call the loop is inside, and for how long; see connectors/kafka_waits.py.
    kafka_blocked: Callable[[float], tuple[str, float] | None] = field(default=lambda now: None)
    blocked_grace_s: float = 5.0
    # Out of the consumer group it had joined: (join state, seconds), or None.
    out_of_group: Callable[[float], tuple[str, float] | None] = field(default=lambda now: None)
    out_of_group_grace_s: float = 10.0

    def publish(self, status: WorkerStatus) -> None:
        self.current = status

    def beat(self, now: float) -> None:
        self.heartbeat = now

    def health(self) -> tuple[bool, str]:
        """(healthy, why): ready once the first assignment is recovered, for as long as
        the loop keeps turning."""
        status = self.current
        if status.state != RUNNING:
            return False, f"worker is {status.state}"
        now = time.monotonic()
        stalled = now - self.heartbeat
        if stalled > self.stall_after_s:
            return False, f"the processing loop has not turned for {stalled:.0f}s"
        # Before readiness: a worker that cannot recover because Kafka is away should say so.
        away = self.kafka_unreachable(now)
        if away is not None and away >= self.kafka_grace_s:
            return False, f"Kafka unreachable for {away:.0f}s: waiting for it, nothing is committed meanwhile"
        blocked = self.kafka_blocked(now)
        if blocked is not None and blocked[1] >= self.blocked_grace_s:
            return False, f"Kafka unreachable: {blocked[0]} has been waiting for the cluster for {blocked[1]:.0f}s"
        outside = self.out_of_group(now)
        if outside is not None and outside[1] >= self.out_of_group_grace_s:
            return False, (f"out of the consumer group for {outside[1]:.0f}s (join state {outside[0]}): its session "
                           "expired, so Kafka is unreachable or the group is rebalancing")
        if not status.ready:
            return False, "recovering: the first partition assignment is not restored yet"
        failing = status.failing_checkpoints
        if failing >= FAILING_CHECKPOINTS_UNHEALTHY:
            last = next((c.error for c in status.checkpoints if c.counted), None)
            return False, f"checkpoints failing: {failing} in a row, nothing is committed meanwhile; last: {last}"
        return True, "ok"
