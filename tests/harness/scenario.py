"""A running-sum scenario against the real broker: topics, an input feeder that keeps
producing while workers come and go, worker processes, and the oracle at the end."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.oracle import OracleReport, Order, check_running_sum
from tests.harness.worker_process import WorkerProcess, WorkerSpec, wait_for
from tests.harness.workload import make_orders, produce_orders


@dataclass
class RunningSum:
    bootstrap: str
    workdir: Path
    records: int = 20_000
    users: int = 200
    partitions: int = 4
    chunk: int = 500
    chunk_pause_s: float = 0.5
    storage: str | None = None
    key_by_user: bool = False
    spec_overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input = unique_name("orders")
        self.output = unique_name("totals")
        self.group = unique_name("running-sum")
        create_topics(self.bootstrap, [self.input, self.output], self.partitions)
        self.orders: dict[int, Order] = make_orders(self.records, self.users)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._feeder: threading.Thread | None = None
        self.workers_started = 0

    def spec(self, **overrides) -> WorkerSpec:
        values = dict(
            bootstrap=self.bootstrap, group=self.group, state_dir=self.workdir / "state",
            storage=self.storage or f"file://{self.workdir / 'checkpoints'}",
            params={"input": self.input, "output": self.output})
        values.update(self.spec_overrides)
        values.update(overrides)
        return WorkerSpec(**values)

    def start_feeding(self, orders: dict[int, Order] | None = None) -> None:
        """Produces the input in chunks over time, so kills land mid-stream."""
        items = list((orders or self.orders).values())

        def feed() -> None:
            for i in range(0, len(items), self.chunk):
                produce_orders(self.bootstrap, self.input, {o.id: o for o in items[i:i + self.chunk]},
                               self.key_by_user)
                time.sleep(self.chunk_pause_s)

        self._feeder = threading.Thread(target=feed, daemon=True)
        self._feeder.start()

    def start_feeding_until(self, stop: threading.Event, orders: dict[int, Order]) -> dict[int, Order]:
        """Produces `orders` in chunks until `stop` is set (or they run out); returns the
        orders produced so far, filled in as they go. A test that must see a backlog
        feeds faster than the job processes until it has seen it: then the backlog is
        there for as long as it takes to look, whatever the timing."""
        items = list(orders.values())
        fed: dict[int, Order] = {}

        def feed() -> None:
            for i in range(0, len(items), self.chunk):
                if stop.is_set():
                    return
                chunk = {o.id: o for o in items[i:i + self.chunk]}
                produce_orders(self.bootstrap, self.input, chunk, self.key_by_user)
                fed.update(chunk)
                time.sleep(self.chunk_pause_s)
            raise AssertionError(f"ran out of the {len(items)} orders before the test stopped feeding")

        self._feeder = threading.Thread(target=feed, daemon=True)
        self._feeder.start()
        return fed

    def feed_all_now(self, orders: dict[int, Order] | None = None) -> None:
        produce_orders(self.bootstrap, self.input, orders or self.orders, self.key_by_user)

    def wait_fed(self) -> None:
        if self._feeder is not None:
            self._feeder.join(600)

    def start_worker(self, fault: str | None = None, **overrides) -> WorkerProcess:
        self.workers_started += 1
        spec = self.spec(**overrides)
        return WorkerProcess(spec, self.workdir / f"{spec.worker_id}.log", fault=fault)

    def outputs(self) -> list:
        return read_all(self.bootstrap, self.output)

    def ids_seen(self) -> set[int]:
        import json

        return {json.loads(v)["last_id"] for _, v in self.outputs()}

    def wait_complete(self, worker: WorkerProcess | None, timeout: float = 180,
                      expected: set[int] | None = None) -> None:
        """Until every expected id has an output and `worker` runs (its start logged: a
        SIGTERM before that would end it before it could stop cleanly), or it died."""
        want = expected if expected is not None else set(self.orders)

        def done() -> bool:
            if worker is not None and not worker.alive():
                raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
            return (worker is None or worker.running()) and want <= self.ids_seen()

        wait_for(done, timeout, 1.0, "every input id to appear in the output")

    def check(self, orders: dict[int, Order] | None = None) -> OracleReport:
        return check_running_sum(orders or self.orders, self.outputs())

    def survivor_finishes(self, **overrides) -> WorkerProcess:
        """A new worker runs the rest of the fed input to its end and stops cleanly, and
        the oracle passes the whole output; returns the worker, for its log."""
        survivor = self.start_worker(**overrides)
        self.wait_fed()
        self.wait_complete(survivor)
        assert survivor.terminate() == 0, survivor.log_tail()
        report = self.check()
        assert report.ok, report.summary()
        return survivor
