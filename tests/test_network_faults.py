"""Network faults, Jepsen-style, on this one machine: workers on hosts of their own
(network namespaces, tests/harness/netns.py) lose the broker or checkpoint storage, whole
or in part, for a while; the faults heal and the independent oracle finds every input
record exactly once in the output. `/healthz` says what is wrong while it lasts, and no
worker hangs: each is healthy again within a bound after the network heals.

The short scenarios run in `make test`; the random schedule is `make chaos`.
"""

from __future__ import annotations

import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.harness import netns
from tests.harness.netns_fixtures import hosts, service_broker  # noqa: F401 - fixtures
from tests.harness.kafka import group_members
from tests.harness.ports import free_port
from tests.harness.s3_server import S3Server
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import WorkerProcess, wait_for

# Each test here runs a broker of its own besides workers on hosts of their own: one at a
# time, in one test process of a parallel run, keeps the machine's two cores for them.
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.xdist_group("network-hosts")]

# After the network heals, a worker answers /healthz 200 again within this long: a
# session timeout to rejoin, a rebalance, a restore from local state.
HEALED_WITHIN_S = 60.0


@pytest.fixture
def service_s3(hosts) -> Iterator[S3Server]:
    server = S3Server(host=netns.SERVICE_IP)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class HostedWorker:
    """A worker process on a host of its own, with its status port."""

    host: netns.Host
    process: WorkerProcess
    port: int

    def health(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.host.ip}:{self.port}/healthz", timeout=3) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)


def _start(scenario: RunningSum, host: netns.Host, worker_id: str, extra: list[str] | None = None,
           env: dict | None = None) -> HostedWorker:
    port = free_port()
    process = scenario.start_worker(
        worker_id=worker_id, membership=None, wrap=host.wrap(), state_dir=scenario.workdir / f"state-{worker_id}",
        extra_args=["--http-host", "0.0.0.0", "--http-port", str(port), *(extra or [])], env=env or {})
    worker = HostedWorker(host, process, port)
    wait_for(lambda: worker.health()[0] == 200 or not process.alive(), 90, 0.5,
             lambda: f"{worker_id} to be healthy ({worker.health()})\n{process.log_tail()}")
    assert process.alive(), process.log_tail()
    return worker


def test_a_new_host_reaches_the_services_beside_a_host_left_behind(hosts):
    """A host left by a run that died holds its subnet; a new host must not share it, or
    the replies to the new host go down the old link and it reaches nothing."""
    left_behind = netns.Host().create()  # not destroyed by the fixture: as if its run died
    try:
        fresh = hosts()
        assert fresh.index != left_behind.index
        with socket.create_server((netns.SERVICE_IP, 0)) as server:
            port = server.getsockname()[1]
            reached = fresh.exec("python3", "-c", f"import socket; socket.create_connection("
                                 f"({netns.SERVICE_IP!r}, {port}), timeout=5)", check=False)
            assert reached.returncode == 0, reached.stderr
    finally:
        left_behind.destroy()


def test_a_worker_cut_off_from_the_broker_says_so_and_the_job_stays_exactly_once(service_broker, hosts, tmp_path):
    _, bootstrap, kafka_port = service_broker
    scenario = RunningSum(bootstrap, tmp_path, records=8_000, chunk=400, chunk_pause_s=0.4)
    scenario.start_feeding()
    cut_off = _start(scenario, hosts(), "w1")
    other = _start(scenario, hosts(), "w2")
    cut_off.host.partition(kafka_port)
    try:
        wait_for(lambda: cut_off.health()[0] == 503 and re.search("Kafka (is )?unreachable", cut_off.health()[1]),
                 40, 0.5,
                 lambda: f"/healthz of the cut-off worker to say so ({cut_off.health()})")
        wait_for(lambda: group_members(bootstrap, scenario.group) == {"w2"}, 60, 0.5,
                 "the other worker to take the cut-off worker's partitions over")
        assert other.health()[0] == 200, other.health()
    finally:
        cut_off.host.heal()
    wait_for(lambda: cut_off.health()[0] == 200 or not cut_off.process.alive(), HEALED_WITHIN_S, 0.5,
             lambda: f"the healed worker to be healthy ({cut_off.health()})\n{cut_off.process.log_tail()}")
    assert cut_off.process.alive(), cut_off.process.log_tail()
    scenario.wait_fed()
    scenario.wait_complete(None, timeout=180)
    for worker in (cut_off, other):
        assert worker.process.terminate() == 0, worker.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_a_worker_cut_off_from_checkpoint_storage_says_so_and_recovers(service_broker, service_s3, hosts, tmp_path):
    _, bootstrap, _ = service_broker
    env = service_s3.env()
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3,
                          storage=f"s3://{service_s3.bucket}/net-{tmp_path.name}")
    scenario.start_feeding()
    worker = _start(scenario, hosts(), "w1", extra=["--tolerable-failures", "1000"], env=env)
    worker.host.partition(service_s3.port)
    try:
        wait_for(lambda: worker.health()[0] == 503 and "checkpoints failing" in worker.health()[1], 90, 0.5,
                 lambda: f"/healthz to report failing checkpoints ({worker.health()})")
    finally:
        worker.host.heal()
    wait_for(lambda: worker.health()[0] == 200 or not worker.process.alive(), HEALED_WITHIN_S, 0.5,
             lambda: f"the worker to be healthy again ({worker.health()})\n{worker.process.log_tail()}")
    scenario.wait_fed()
    scenario.wait_complete(worker.process, timeout=180)
    assert worker.process.terminate() == 0, worker.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


# -- the random schedule (make chaos) ------------------------------------------------------------------------


@dataclass
class FaultLog:
    injected: dict[str, int] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)  # "w1 exit 4", in order

    def note(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def summary(self) -> str:
        return f"faults {self.injected}, restarts after exits {self.restarts}"


# Exit codes a supervisor restarts after: checkpoints failing past the tolerated (a long
# storage partition) and a client that could not go on (1).
RESTARTABLE = {1, 4}


@pytest.mark.chaos
def test_random_network_faults_between_workers_broker_and_storage(service_broker, service_s3, hosts, tmp_path):
    _, bootstrap, kafka_port = service_broker
    rng = random.Random(20261204)
    env = service_s3.env()
    scenario = RunningSum(bootstrap, tmp_path, records=40_000, chunk=400, chunk_pause_s=0.4,
                          storage=f"s3://{service_s3.bucket}/net-chaos")
    scenario.start_feeding()
    workers = {name: _start(scenario, hosts(), name, env=env) for name in ("w1", "w2")}
    faults = FaultLog()
    deadline = time.monotonic() + 200
    try:
        while time.monotonic() < deadline:
            name = rng.choice(sorted(workers))
            worker = workers[name]
            kind = rng.choice(["broker partition", "storage partition", "broker loss", "storage loss", "squeeze"])
            if kind == "broker partition":
                worker.host.partition(kafka_port)
            elif kind == "storage partition":
                worker.host.partition(service_s3.port)
            elif kind == "broker loss":
                worker.host.lose(kafka_port, rng.uniform(0.05, 0.3))
            elif kind == "storage loss":
                worker.host.lose(service_s3.port, rng.uniform(0.05, 0.3))
            else:
                worker.host.squeeze()
            faults.note(kind)
            time.sleep(rng.uniform(3, 15))
            worker.host.heal()
            time.sleep(rng.uniform(2, 6))
            for other_name, other in workers.items():
                if not other.process.alive():
                    code = other.process.proc.returncode
                    assert code in RESTARTABLE, f"{other_name} exited {code}:\n{other.process.log_tail()}"
                    faults.restarts.append(f"{other_name} exit {code}")
                    workers[other_name] = _start(scenario, other.host, other_name, env=env)
    finally:
        for worker in workers.values():
            worker.host.heal()
    for name, worker in workers.items():
        wait_for(lambda: worker.health()[0] == 200 or not worker.process.alive(), HEALED_WITHIN_S, 0.5,
                 lambda: f"{name} to be healthy after the network healed ({worker.health()})")
        if not worker.process.alive():
            assert worker.process.proc.returncode in RESTARTABLE, worker.process.log_tail()
            workers[name] = _start(scenario, worker.host, name, env=env)
    scenario.wait_fed()
    scenario.wait_complete(None, timeout=300)
    for worker in workers.values():
        assert worker.process.terminate() == 0, worker.process.log_tail()
    report = scenario.check()
    print(f"network chaos: {faults.summary()}; oracle: {report.summary()}")
    assert report.ok, f"{report.summary()}; {faults.summary()}"
