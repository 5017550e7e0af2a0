"""One run of a test job over generated input: its topics, the feed, its workers."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.harness import table_oracle as oracle
from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.worker_process import REPO, WorkerProcess, WorkerSpec, wait_for

JOBS = REPO / "tests" / "jobs"
PARTITIONS = 4


class JoinRun:
    """One run of a job over generated input: topics, the feed, workers."""

    def __init__(self, bootstrap: str, workdir: Path, job: str, roles: list[str],
                 extra: tuple[str, ...] = (), partitions: dict[str, int] | None = None) -> None:
        self.bootstrap, self.workdir, self.job, self.extra = bootstrap, workdir, JOBS / job, list(extra)
        self.topics = {role: unique_name(role) for role in roles}
        self.output, self.group = unique_name("out"), unique_name("g")
        for role, topic in self.topics.items():
            create_topics(bootstrap, [topic], (partitions or {}).get(role, PARTITIONS))
        create_topics(bootstrap, [self.output], PARTITIONS)
        workdir.mkdir(parents=True, exist_ok=True)
        self.started = 0
        self._feeder = None

    def feed(self, events: list[oracle.Event], chunk: int = 200, pause_s: float = 0.3) -> None:
        self._feeder = oracle.feed(self.bootstrap, self.topics, events, chunk, pause_s)

    def wait_fed(self) -> None:
        self._feeder.join(180)
        assert not self._feeder.is_alive(), "the feed did not finish"

    def start_worker(self, guarantee: str = "exactly-once", fault: str | None = None) -> WorkerProcess:
        self.started += 1
        spec = WorkerSpec(bootstrap=self.bootstrap, group=self.group, state_dir=self.workdir / "state",
                          storage=f"file://{self.workdir / 'checkpoints'}", job=self.job, guarantee=guarantee,
                          params={**self.topics, "output": self.output}, extra_args=self.extra)
        return WorkerProcess(spec, self.workdir / f"worker-{self.started}.log", fault)

    def outputs(self) -> list[tuple[bytes, bytes]]:
        return read_all(self.bootstrap, self.output)

    def kill_at_random(self, kills: int, seed: int, guarantee: str = "exactly-once") -> None:
        rng = random.Random(seed)
        for _ in range(kills):
            worker = self.start_worker(guarantee)
            time.sleep(rng.uniform(2.0, 4.0))
            assert worker.alive(), f"worker died on its own:\n{worker.log_tail()}"
            worker.kill()

    def finish(self, done, what: str, timeout: float = 180, guarantee: str = "exactly-once") -> None:
        """A last worker runs until `done(outputs)` holds, then stops cleanly."""
        worker = self.start_worker(guarantee)

        def complete() -> bool:
            assert worker.alive(), worker.log_tail()
            return worker.running() and done(self.outputs())

        wait_for(complete, timeout, 1.0, what)
        assert worker.terminate() == 0, worker.log_tail()
