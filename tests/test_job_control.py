"""A job operated by its name on a real broker: its workers are found through its consumer
group, a savepoint is taken and resumed with three workers by the job id alone, one page
served by any worker lists every worker and task (read by a real browser), and the
state of keys, read from the running workers and from the savepoint, equals what the
independent oracle computes from the input."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import defaultdict

import pytest

from service.savepoints.resume import open_savepoint
from tests.harness import browser
from tests.harness.oracle import Order
from tests.harness.savepoints import ControlledWorker, eos, start_controlled, wait_settled
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import REPO, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WORKERS = ("w1", "w2", "w3")


def _expected_totals(orders: dict[int, Order]) -> dict[str, tuple[int, int]]:
    """The oracle: per user, (sum of amounts, number of orders), from the input alone."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for order in orders.values():
        totals[order.user][0] += order.amount
        totals[order.user][1] += 1
    return {user: (s, n) for user, (s, n) in totals.items()}


def _start(scenario: RunningSum, *extra: str) -> list[ControlledWorker]:
    workers = [start_controlled(scenario, worker_id=w, extra_args=list(extra)) for w in WORKERS]
    for worker in workers:
        worker.wait_ready()
    wait_settled(workers)
    return workers


def _get(url: str) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                              {"redirect_request": lambda *a, **k: None}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_savepoint_is_taken_and_resumed_by_job_name_with_three_workers(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=9_000)
    before = {i: o for i, o in scenario.orders.items() if i < 4_500}
    after = {i: o for i, o in scenario.orders.items() if i >= 4_500}
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    workers = _start(scenario)
    listed = eos("job", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    jobs = {j["job"]: j for j in map(json.loads, listed.stdout.splitlines())}
    assert jobs[scenario.group]["state"] == "running" and jobs[scenario.group]["workers"] == list(WORKERS)
    scenario.feed_all_now(before)
    wait_for(lambda: len(scenario.ids_seen()) >= 1_000, 90, 0.5, "some output")

    stopped = eos("savepoint", "stop", scenario.group, "--target", str(tmp_path / "savepoints"), env=env)

    assert stopped.returncode == 0, stopped.stderr
    for worker in workers:
        assert worker.process.wait(60) == 0, worker.process.log_tail()
    location = stopped.stdout.strip().splitlines()[-1]
    manifest, _ = open_savepoint(location)  # written by a worker, manifest included
    assert manifest.workers == WORKERS and manifest.group == scenario.group
    assert len(manifest.positions) == 8  # 4 input and 4 repartition partitions

    def listed_as_stopped() -> bool:  # static members stay listed until their session expires
        listed = eos("job", "list", "--json", env=env)
        return {"job": scenario.group, "state": "stopped", "workers": [], "partitions": 8} in \
            list(map(json.loads, listed.stdout.splitlines()))

    wait_for(listed_as_stopped, 60, 1.0, "eos job list to show the job stopped")

    resumed = _start(scenario, "-s", location)  # Flink's short flag for --from-savepoint
    scenario.feed_all_now(after)
    scenario.wait_complete(None)
    for worker in resumed:
        assert worker.process.terminate() == 0, worker.process.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_the_job_page_of_any_worker_lists_every_worker_and_task(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=3_000)
    workers = _start(scenario)
    scenario.feed_all_now()
    scenario.wait_complete(None)

    for worker in (workers[0], workers[2]):
        html = browser.dump_dom(worker.url + "/job")
        rows = browser.table_rows(html, "workers")
        assert sorted(cells[0] for _, cells in rows) == list(WORKERS), html
        assert all("running" in cells[1] for _, cells in rows), rows
        tasks = browser.table_rows(html, "job-tasks")
        held = sorted((cells[1], int(cells[2])) for _, cells in tasks)
        assert len(held) == 8 and len(set(held)) == 8, held  # every partition of both stages, once
        assert {cells[3] for _, cells in tasks} == set(WORKERS)

    status, job = _get(workers[1].url + "/job.json")
    assert status == 200 and [w["worker"] for w in job["workers"]] == list(WORKERS)
    assert job["totals"]["tasks"] == 8 and job["totals"]["reachable"] == 3
    assert all(w["last_checkpoint"] for w in job["workers"]), job["workers"]
    printed = eos("job", "status", scenario.group, env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    assert printed.returncode == 0, printed.stderr
    assert all(w in printed.stdout for w in WORKERS) and "3/3 workers answering" in printed.stdout
    for worker in workers:
        assert worker.process.terminate() == 0


def test_state_read_from_running_workers_and_from_a_savepoint_equals_the_oracle(bootstrap, tmp_path):
    scenario = RunningSum(bootstrap, tmp_path, records=4_000, users=40)
    expected = _expected_totals(scenario.orders)
    workers = _start(scenario)
    scenario.feed_all_now()
    scenario.wait_complete(None)

    def final_state_committed() -> bool:
        for user in list(expected)[:3]:
            status, body = _get(f"{workers[0].url}/state/totals/{urllib.parse.quote(user)}")
            if status == 307:
                status, body = _get(f"{body['urls'][0]}/state/totals/{urllib.parse.quote(user)}")
            if status != 200 or body["uncommitted"]:
                return False
        return True

    wait_for(final_state_committed, 60, 0.5, "the final state to be committed")
    redirected = 0
    for user, (total, count) in expected.items():
        status, body = _get(f"{workers[0].url}/state/totals/{urllib.parse.quote(user)}")
        if status == 307:  # another worker owns the key's partition: it is named
            redirected += 1
            assert body["owner"] in WORKERS and body["owner"] != "w1" and body["urls"], body
            status, body = _get(f"{body['urls'][0]}/state/totals/{urllib.parse.quote(user)}")
            assert body["worker"] != "w1"
        assert status == 200, body
        acc = body["state"]["acc"]
        assert (acc["sum"], acc["count"]) == (total, count), (user, body)
    assert redirected > 0, "with three workers some keys must live elsewhere"
    got = eos("state", "get", scenario.group, "--uid", "totals", "--key", next(iter(expected)),
              env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["state"]["acc"]["sum"] == next(iter(expected.values()))[0]
    missing = _get(f"{workers[0].url}/state/no-such-uid/{next(iter(expected))}")
    assert missing[0] == 404 and "totals" in missing[1]["error"]

    stopped = eos("savepoint", "stop", scenario.group, "--target", str(tmp_path / "savepoints"),
                  env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    assert stopped.returncode == 0, stopped.stderr
    location = stopped.stdout.strip().splitlines()[-1]
    dumped = eos("state", "read", location, "--uid", "totals")
    assert dumped.returncode == 0, dumped.stderr
    lines = [json.loads(line) for line in dumped.stdout.splitlines()]
    assert {line["key"]: (line["value"]["sum"], line["value"]["count"]) for line in lines} == expected
    assert len(lines) == len(expected)
    user = next(iter(expected))
    one = eos("state", "read", location, "--uid", "totals", "--key", user)
    assert one.returncode == 0 and [json.loads(x)["key"] for x in one.stdout.splitlines()] == [user], one.stderr

    # the checkpoints the workers committed last hold the same values
    from_checkpoints = eos("state", "read", f"file://{tmp_path / 'checkpoints'}", "--job", scenario.group,
                           "--uid", "totals", "--job-file", str(REPO / "examples" / "running_sum.py"),
                           "-p", f"input={scenario.input}", "-p", f"output={scenario.output}")
    assert from_checkpoints.returncode == 0, from_checkpoints.stderr
    lines = [json.loads(line) for line in from_checkpoints.stdout.splitlines()]
    assert {line["key"]: (line["value"]["sum"], line["value"]["count"]) for line in lines} == expected
