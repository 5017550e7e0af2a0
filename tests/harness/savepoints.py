"""Savepoint scenarios: running-sum workers that serve their control API, the `eos
savepoint` command as a real process, and plain-Kafka views of a group's offsets."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from tests.harness.ports import free_port
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import EOS, OUTSIDE_REPO, REPO, WorkerProcess, wait_for

JOBS = REPO / "tests" / "jobs"


def eos(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EOS, *args], cwd=OUTSIDE_REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class ControlledWorker:
    """A worker process with its HTTP port, ready once /healthz says so."""

    def __init__(self, process: WorkerProcess, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 90) -> ControlledWorker:
        def ready() -> bool:
            if not self.process.alive():
                raise AssertionError(f"worker exited with {self.process.proc.returncode}:\n{self.process.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_for(ready, timeout, 0.25, f"worker at {self.url} to be ready")
        return self

    def status(self) -> dict:
        with urllib.request.urlopen(self.url + "/status.json", timeout=5) as response:
            return json.loads(response.read())

    def metric(self, name: str, default: float | None = None) -> float:
        """The metric's value, summed over its label sets (topics, operators); `default`
        while it has none (a labelled counter appears with its first label set)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            samples = [float(line.rsplit(" ", 1)[1]) for line in response.read().decode().splitlines()
                       if line.startswith(name + "{") or line.startswith(name + " ")]
        if not samples:
            if default is not None:
                return default
            raise AssertionError(f"metric {name} not exported")
        return sum(samples)


def start_controlled(scenario: RunningSum, **overrides) -> ControlledWorker:
    port = free_port()
    extra = list(overrides.pop("extra_args", [])) + ["--http-port", str(port)]
    return ControlledWorker(scenario.start_worker(extra_args=extra, **overrides), port)


def wait_settled(workers: list[ControlledWorker], timeout: float = 120) -> None:
    """Until every worker holds tasks and the assignment stayed the same for a second, so
    a test's first checkpoints do not race the group's rebalances."""
    previous: list = []

    def balanced() -> bool:
        nonlocal previous
        assignment = [sorted(t["task"] for t in w.status()["tasks"]) for w in workers]
        settled = all(assignment) and assignment == previous
        previous = assignment
        return settled

    wait_for(balanced, timeout, 1.0, "every worker to hold tasks, unchanged for a second")


def savepoint(mode: str, workers: list[ControlledWorker], target: Path | str | None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = ["savepoint", mode] + (["--target", str(target)] if target is not None else [])
    for worker in workers:
        args += ["--job", worker.url]
    return eos(*args, env=env)


def stop_with_savepoint(workers: list[ControlledWorker], target: Path | str | None,
                        env: dict[str, str] | None = None) -> str:
    """Stops the workers with a savepoint; returns its location."""
    result = savepoint("stop", workers, target, env)
    assert result.returncode == 0, result.stderr
    for worker in workers:
        assert worker.process.wait(60) == 0, worker.process.log_tail()
    return result.stdout.strip().splitlines()[-1]


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, tuple[int, str]]:
    """(offset, metadata) per partition, as the group coordinator has them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: (tp.offset, tp.metadata) for tp in found}
    finally:
        consumer.close()


def partition_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "metadata"})
    try:
        return len(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    finally:
        consumer.close()
