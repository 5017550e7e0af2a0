"""One run of tests/jobs/windowed_orders.py over generated orders: its topics, the input
fed over time, its workers, and what the window oracle expects of its outputs."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.window_oracle import (
    FLUSH_USER,
    Expected,
    TimedOrder,
    WindowReport,
    WindowRules,
    check_windows,
    encode,
    expected_count_windows,
    expected_sessions,
    expected_sliding,
    expected_windows,
)
from tests.harness.worker_process import REPO, WorkerProcess, WorkerSpec, kill_at_random, wait_for

JOB = REPO / "tests" / "jobs" / "windowed_orders.py"
PARTITIONS = 4
# What tests/jobs/windowed_orders.py uses.
SIZE_MS, ADVANCE_MS, GAP_MS, GRACE_MS, OUT_OF_ORDERNESS_MS = 10_000, 5_000, 1_000, 2_000, 1_000
COUNT_SIZE, COUNT_SLIDE = 5, 2


def rules(shape: str) -> WindowRules:
    return WindowRules(SIZE_MS, ADVANCE_MS if shape == "hopping" else None, GRACE_MS, OUT_OF_ORDERNESS_MS)


def expected_for(shape: str, orders: list[TimedOrder], emit: str = "final") -> Expected:
    """The oracle's windows of `shape` over `orders`."""
    if shape == "session":
        return expected_sessions(orders, GAP_MS, GRACE_MS, OUT_OF_ORDERNESS_MS)
    if shape == "sliding":
        return expected_sliding(orders, SIZE_MS, GRACE_MS, OUT_OF_ORDERNESS_MS)
    if shape == "count":
        return expected_count_windows(orders, COUNT_SIZE, COUNT_SLIDE, unfilled=emit == "update")
    return expected_windows(orders, rules(shape))


def by_user_partition(orders: list[TimedOrder]) -> list[TimedOrder]:
    """The orders with each user's on one partition (the flush orders stay where they
    are), so a user's records reach its window task in the order they were produced."""
    return [TimedOrder(o.id, o.user, o.amount, o.ts, int(o.user.split("-")[-1]) % PARTITIONS
                       if o.user != FLUSH_USER else o.partition) for o in orders]


def feed_in_background(bootstrap: str, topic: str, orders: list[TimedOrder], key=lambda o: str(o.id).encode(),
                       event_time_as_timestamp: bool = False, chunk: int = 200,
                       pause_s: float = 0.4) -> threading.Thread:
    """Produces the orders in order, each to its partition, in chunks over time (so kills
    land while records flow); returns the feeding thread."""
    from confluent_kafka import Producer

    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 10})
        for i, order in enumerate(orders):
            extra = {"timestamp": order.ts} if event_time_as_timestamp else {}
            producer.produce(topic, encode(order), key(order), partition=order.partition, **extra)
            if i % chunk == chunk - 1:
                producer.flush(30)
                time.sleep(pause_s)
        assert producer.flush(30) == 0

    feeder = threading.Thread(target=run, daemon=True)
    feeder.start()
    return feeder


class WindowedRun:
    """One run of the windowed job: its topics, its input fed over time, its workers.
    With `updates`, the job also sends every update of the same windows to a second
    topic, checked against the same oracle."""

    def __init__(self, bootstrap: str, workdir: Path, orders: list[TimedOrder], shape: str, emit: str,
                 late_topic: bool = False, idle_ms: int | None = None, updates: bool = False) -> None:
        self.bootstrap, self.workdir, self.orders, self.shape, self.emit = bootstrap, workdir, orders, shape, emit
        self.input, self.output, self.group = unique_name("timed-orders"), unique_name("windows"), unique_name("win")
        self.late = unique_name("late") if late_topic else None
        self.updates = unique_name("updates") if updates else None
        create_topics(bootstrap, [self.input, self.output] + [t for t in (self.late, self.updates) if t], PARTITIONS)
        workdir.mkdir(parents=True, exist_ok=True)
        self.params = {"input": self.input, "output": self.output, "shape": shape, "emit": emit}
        if self.late:
            self.params["late"] = self.late
        if self.updates:
            self.params["updates"] = self.updates
        if idle_ms is not None:
            self.params["idle_ms"] = str(idle_ms)
        self.expected = expected_for(shape, orders, emit)
        self._feeder: threading.Thread | None = None
        self.started = 0

    def feed(self, chunk: int = 400, pause_s: float = 0.3, orders: list[TimedOrder] | None = None) -> None:
        """Produces the orders (all, by default) in order, each to its partition, in
        chunks over time."""
        self._feeder = feed_in_background(self.bootstrap, self.input, self.orders if orders is None else orders,
                                          chunk=chunk, pause_s=pause_s)

    def wait_fed(self) -> None:
        self._feeder.join(120)

    def start_worker(self, guarantee: str = "exactly-once", http_port: int | None = None,
                     fault: str | None = None, extra: tuple[str, ...] = ()) -> WorkerProcess:
        self.started += 1
        extra = list(extra) + (["--http-port", str(http_port)] if http_port else [])
        spec = WorkerSpec(bootstrap=self.bootstrap, group=self.group, state_dir=self.workdir / "state",
                          storage=f"file://{self.workdir / 'checkpoints'}", params=self.params, job=JOB,
                          guarantee=guarantee, extra_args=extra)
        return WorkerProcess(spec, self.workdir / f"worker-{self.started}.log", fault)

    def outputs(self, topic: str | None = None) -> list[tuple[bytes, bytes, int]]:
        return [o for o in read_all(self.bootstrap, topic or self.output, with_timestamp=True)
                if o[0] != FLUSH_USER.encode()]

    def wanted_outputs(self) -> int:
        if self.emit == "final":
            return len(self.expected.windows)
        return sum(w["orders"] for w in self.expected.windows.values())

    def wait_complete(self, worker: WorkerProcess, timeout: float = 180) -> None:
        worker.wait_assigned()

        def done() -> bool:
            assert worker.alive(), worker.log_tail()
            return len(self.outputs()) >= self.wanted_outputs()

        wait_for(done, timeout, 1.0, lambda: f"{len(self.outputs())} of {self.wanted_outputs()} window outputs")

    def kill_at_random(self, kills: int, seed: int, guarantee: str = "exactly-once") -> None:
        kill_at_random(lambda _: self.start_worker(guarantee), kills, seed)

    def check(self) -> WindowReport:
        return self._check(self.expected, self.outputs(), self.emit)

    def check_updates(self) -> WindowReport:
        """The second topic's updates against the oracle's windows with emit=update."""
        return self._check(expected_for(self.shape, self.orders, "update"), self.outputs(self.updates), "update")

    def _check(self, expected: Expected, outputs: list, emit: str) -> WindowReport:
        return check_windows(expected, outputs, emit, SIZE_MS, inclusive_end=self.shape == "sliding",
                             final_ts=self.shape != "count")

    def run_at_least_once_with_kills(self, kills: int = 3) -> WindowReport:
        """The oracle's self-test on a real run: without transactions, a worker killed
        after its outputs were flushed but before its offsets were committed reads those
        records again; returns the oracle's report."""
        self.feed(chunk=200, pause_s=0.4)
        for _ in range(kills):  # killed when its 3rd checkpoint flushed the outputs, before it commits offsets
            worker = self.start_worker("at-least-once", fault="after_flush@3")
            assert worker.wait(60) == -signal.SIGKILL, worker.log_tail()
        self.wait_fed()
        final = self.start_worker(guarantee="at-least-once")
        self.wait_complete(final)
        assert final.terminate() == 0, final.log_tail()
        return self.check()

    def run_through_kills(self, kills: int, seed: int) -> WindowReport:
        """Feeds the input while workers are SIGKILLed at random moments (the feed is slow
        enough for kills to land while records flow), then lets a last worker finish;
        returns the oracle's report."""
        self.feed(chunk=200, pause_s=0.4)
        self.kill_at_random(kills=kills, seed=seed)
        self.wait_fed()
        final = self.start_worker()
        self.wait_complete(final)
        assert final.terminate() == 0, final.log_tail()
        return self.check()
