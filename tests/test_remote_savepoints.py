"""Savepoints in the shipped deployment's topology, without a Docker engine: three
workers on hosts of their own (network namespaces), bound to every interface with a
control token from a file and an allowed network, as docker-compose.yml starts them;
`eos savepoint stop JOB` from another address finds them through the group, and the
workers write the savepoint, manifest included, to the shared checkpoint directory.
The job resumes from it and the oracle checks every output."""

from __future__ import annotations

import json
import secrets

import pytest

from service.savepoints.resume import open_savepoint
from tests.harness import netns
from tests.harness.netns_fixtures import hosts, service_broker  # noqa: F401 - fixtures
from tests.harness.ports import free_port
from tests.harness.savepoints import eos
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.xdist_group("network-hosts")]

WORKERS = ("w1", "w2", "w3")


def _start(scenario: RunningSum, host: netns.Host, worker_id: str, token_file, extra: list[str]):
    port = free_port()
    process = scenario.start_worker(
        worker_id=worker_id, membership=None, wrap=host.wrap(), state_dir=scenario.workdir / f"state-{worker_id}",
        extra_args=["--http-host", "0.0.0.0", "--http-port", str(port),
                    "--http-advertised-url", f"http://{host.ip}:{port}", "--control-allow", "10.77.0.0/16",
                    "--savepoint-dir", f"file://{scenario.workdir}/shared/savepoints", *extra],
        env={"EOS_CONTROL_TOKEN_FILE": str(token_file)})
    return process, f"http://{host.ip}:{port}"


def test_stop_with_savepoint_from_another_address_by_job_name(service_broker, hosts, tmp_path):  # noqa: F811
    _, bootstrap, _ = service_broker
    token_file = tmp_path / "control-token"
    token_file.write_text(secrets.token_hex(16) + "\n")
    scenario = RunningSum(bootstrap, tmp_path, records=6_000)
    before = {i: o for i, o in scenario.orders.items() if i < 3_000}
    after = {i: o for i, o in scenario.orders.items() if i >= 3_000}
    workers = [_start(scenario, hosts(), w, token_file, []) for w in WORKERS]
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}

    def all_hold_tasks() -> bool:
        shown = eos("job", "status", scenario.group, "--json", env=env)
        if shown.returncode != 0:
            return False
        job = json.loads(shown.stdout)
        return job["totals"]["reachable"] == 3 and all(w["tasks"] for w in job["workers"])

    wait_for(all_hold_tasks, 120, 1.0, "three workers holding tasks, reached at their advertised addresses")
    scenario.feed_all_now(before)
    wait_for(lambda: len(scenario.ids_seen()) >= 500, 90, 0.5, "some output")

    refused = eos("savepoint", "stop", scenario.group, env=env)  # no token: not from loopback, refused
    assert refused.returncode != 0 and "refused control" in refused.stderr, refused.stderr
    assert all(p.alive() for p, _ in workers)

    stopped = eos("savepoint", "stop", scenario.group, env={**env, "EOS_CONTROL_TOKEN_FILE": str(token_file)})

    assert stopped.returncode == 0, stopped.stderr
    for process, _ in workers:
        assert process.wait(60) == 0, process.log_tail()
    location = stopped.stdout.strip().splitlines()[-1]
    assert location.startswith(f"file://{tmp_path}/shared/savepoints/sp-"), location
    manifest, _ = open_savepoint(location)
    assert manifest.workers == WORKERS and len(manifest.positions) == 8

    resumed = scenario.start_worker(worker_id="w1", extra_args=["-s", location], membership=None)
    scenario.feed_all_now(after)
    scenario.wait_complete(resumed)
    assert resumed.terminate() == 0, resumed.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
