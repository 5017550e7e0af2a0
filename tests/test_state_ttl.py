"""State with a time to live, exactly once, against the real broker with SIGKILLs.

Workers run `eos run tests/jobs/ttl_orders.py`: an aggregate and a process function's
value and map states, all with a 2 s TTL of event time. The input has out-of-order and
late records and users who fall silent for longer than the TTL; the independent oracle
(tests/harness/ttl_oracle.py) replays the documented rules and derives every output.
Expired values are never read (the outputs say what each record saw), and the cleanup
deletes them from the store: the state a savepoint holds at the end has no user left.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.ports import free_port
from tests.harness.savepoints import ControlledWorker, stop_with_savepoint
from tests.harness.ttl_oracle import check_outputs, expected_ttl
from tests.harness.window_oracle import FLUSH_USER, TimedOrder, timed_orders
from tests.harness.windowed_run import PARTITIONS, by_user_partition, feed_in_background
from tests.harness.worker_process import REPO, WorkerProcess, WorkerSpec, kill_at_random, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

JOB = REPO / "tests" / "jobs" / "ttl_orders.py"
TTL_MS, OUT_OF_ORDERNESS_MS = 2_000, 1_000


def _by_user(order: TimedOrder) -> bytes:
    return order.user.encode()


def _saved_users(savepoint: Path, uid: str, state: str) -> set[str]:
    """The users a savepoint's state file holds (the canonical JSON lines)."""
    users = set()
    for part in (savepoint / "state" / uid / state).glob("part-*.jsonl"):
        users |= {json.loads(line)["k"] for line in part.read_text().splitlines()}
    return users


def test_expired_state_is_never_read_and_leaves_the_store_under_kills(bootstrap, tmp_path):
    """Per user totals and recollections that forget after 2 s of event time, while
    workers are SIGKILLed at random moments: every output is what the oracle derives
    (so no expired value was read, and the same values expired in every attempt), each
    exactly once; the cleanup counted its deletions, and once event time has moved an
    hour on, a savepoint holds no state of any user."""
    orders = by_user_partition(timed_orders(5_000, PARTITIONS, users=60, seed=43, late_every=11))
    partitions: dict[int, list[TimedOrder]] = {}
    for order in orders:
        partitions.setdefault(order.partition, []).append(order)
    expected = expected_ttl(partitions, TTL_MS, OUT_OF_ORDERNESS_MS)
    assert expected.expiries > 500, "the input does not make state expire often"
    topic, totals, recall, group = (unique_name(n) for n in ("ttl-orders", "totals", "recall", "ttl"))
    create_topics(bootstrap, [topic, totals, recall], PARTITIONS)
    spec = dict(bootstrap=bootstrap, group=group, state_dir=tmp_path / "state",
                storage=f"file://{tmp_path / 'checkpoints'}", job=JOB,
                params={"input": topic, "totals": totals, "recall": recall})
    # The flush orders (an hour after the rest) come once the last worker runs, so the
    # cleanup that follows them is its own.
    flush = [o for o in orders if o.user == FLUSH_USER]
    feeder = feed_in_background(bootstrap, topic, [o for o in orders if o.user != FLUSH_USER], key=_by_user)
    kill_at_random(lambda i: WorkerProcess(WorkerSpec(**spec), tmp_path / f"worker-{i}.log"), kills=4, seed=47)
    feeder.join(120)
    port = free_port()
    final = ControlledWorker(WorkerProcess(WorkerSpec(**spec, extra_args=["--http-port", str(port)]),
                                           tmp_path / "worker-final.log"), port).wait_ready()

    def outputs(name: str) -> list:
        return [o for o in read_all(bootstrap, name) if o[0] != FLUSH_USER.encode()]

    wait_for(lambda: len(outputs(recall)) >= len(expected.recall) and len(outputs(totals)) >= len(expected.totals),
             180, 1.0, lambda: f"{len(outputs(recall))} and {len(outputs(totals))} of {len(expected.recall)} outputs")
    assert check_outputs(expected.totals, outputs(totals), "last_id") == []
    assert check_outputs(expected.recall, outputs(recall), "id") == []

    # Event time moves an hour on: the next checkpoints sweep every user.
    feed_in_background(bootstrap, topic, flush, key=_by_user).join(60)
    wait_for(lambda: final.metric("eos_state_expired_total") > 0, 60, 0.5, "the cleanup to delete expired values")
    location = Path(stop_with_savepoint([final], tmp_path / "savepoints").removeprefix("file://"))
    for uid, state in (("totals", "acc"), ("recall", "previous"), ("recall", "by-size")):
        assert _saved_users(location, uid, state) == {FLUSH_USER}, f"{uid}:{state} kept expired users"


def test_the_oracle_catches_state_that_outlives_its_ttl_and_repeated_outputs():
    """The oracle's self-test: the outputs of a job that never forgets, or that sends an
    output twice, fail its check."""
    orders = by_user_partition(timed_orders(2_000, PARTITIONS, users=60, seed=3, late_every=11))
    partitions: dict[int, list[TimedOrder]] = {}
    for order in orders:
        partitions.setdefault(order.partition, []).append(order)
    expected = expected_ttl(partitions, TTL_MS, OUT_OF_ORDERNESS_MS)
    forever = expected_ttl(partitions, 10**12, OUT_OF_ORDERNESS_MS)

    def as_outputs(by_id: dict[int, dict]) -> list[tuple[bytes, bytes]]:
        return [(b"user", json.dumps(value).encode()) for value in by_id.values()]

    assert check_outputs(expected.recall, as_outputs(expected.recall), "id") == []
    assert check_outputs(expected.recall, as_outputs(forever.recall), "id")
    assert check_outputs(expected.totals, as_outputs(forever.totals), "last_id")
    twice = as_outputs(expected.totals)
    assert check_outputs(expected.totals, twice + twice[:1], "last_id")
