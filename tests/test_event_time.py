"""Windows on event time, exactly once, proven against the real broker with SIGKILLs.

Workers run `eos run tests/jobs/windowed_orders.py` as users run jobs. The input has
out-of-order and late records; the independent oracle (tests/harness/window_oracle.py)
recomputes every window from it. Windows close across a repartition topic fed by four
upstream tasks, so time progress travels between workers' tasks as it does in a job
spread over machines.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions

from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.ports import free_port
from tests.harness.savepoints import eos
from tests.harness.timer_oracle import check_alerts, expected_alerts
from tests.harness.window_oracle import TimedOrder, check_windows, expected_windows, timed_orders
from tests.harness.windowed_run import PARTITIONS, SIZE_MS, WindowedRun, by_user_partition, feed_in_background, rules
from tests.harness.worker_process import REPO, WorkerProcess, WorkerSpec, kill_at_random, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SILENCE_MS = 30_000  # examples/inactivity_alert.py


def test_late_records_go_to_the_late_topic_exactly_once_under_kills(bootstrap, tmp_path):
    """With a late-data topic, each record the oracle finds late is there exactly once,
    its bytes untouched and headers saying why, while workers are SIGKILLed."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(4_000, PARTITIONS, seed=12, late_every=7), "tumbling",
                      "final", late_topic=True)
    report = run.run_through_kills(kills=4, seed=31)
    assert report.ok, report.summary()
    late = read_all(bootstrap, run.late, with_headers=True)
    ids = Counter(json.loads(value)["id"] for _, value, _ in late)
    assert set(ids) == run.expected.late_ids and max(ids.values()) == 1, (
        f"{len(late)} late records for {len(run.expected.late_ids)} expected; "
        f"repeated {[i for i, n in ids.items() if n > 1][:5]}, "
        f"missing {sorted(run.expected.late_ids - set(ids))[:5]}, unexpected {sorted(set(ids) - run.expected.late_ids)[:5]}")
    headers = dict(late[0][2])
    assert headers["eos.operator"] == b"per-window" and b"had closed" in headers["eos.late.reason"], headers


def test_an_idle_partition_does_not_hold_the_windows_back(bootstrap, tmp_path):
    """One of the four input partitions gets nothing: with the source's idle timeout
    the windows downstream close on the other three, and hold what the oracle says."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(3_000, PARTITIONS, seed=2, empty_partitions=(3,)),
                      "tumbling", "final", idle_ms=2_000)
    run.feed()
    worker = run.start_worker()
    run.wait_fed()
    run.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    report = run.check()
    assert report.ok, report.summary()
    assert "had no input for 2s: idle" in worker.log_text()


def test_an_input_going_idle_after_the_rest_was_committed_still_closes_the_windows(bootstrap, tmp_path):
    """All the input is there before the worker starts, and the idle timeout (4 s) is
    longer than reading and checkpointing it takes: every partition goes idle once
    nothing else is left to commit. The idle markers alone must reach the windows."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(3_000, PARTITIONS, seed=3, empty_partitions=(3,)),
                      "tumbling", "final", idle_ms=4_000)
    run.feed()
    run.wait_fed()
    worker = run.start_worker()
    run.wait_complete(worker, timeout=60)
    assert worker.terminate() == 0, worker.log_tail()
    report = run.check()
    assert report.ok, report.summary()


def test_timers_fire_exactly_once_under_kills(bootstrap, tmp_path):
    """examples/inactivity_alert.py, its input keyed by user with event times as Kafka
    timestamps (some out of order), under SIGKILLs at random moments: every alert the
    timer oracle finds is sent exactly once, none other."""
    orders = timed_orders(5_000, PARTITIONS, users=300, seed=21, late_every=11)
    by_user = by_user_partition(orders)
    topic, alerts, group = unique_name("orders-by-user"), unique_name("alerts"), unique_name("silence")
    create_topics(bootstrap, [topic, alerts], PARTITIONS)
    partitions: dict[int, list[tuple[str, int]]] = {}
    for o in by_user:
        partitions.setdefault(o.partition, []).append((o.user, o.ts))
    expected = expected_alerts(partitions, SILENCE_MS)
    assert len(expected) > 100, len(expected)

    feeder = feed_in_background(bootstrap, topic, by_user, key=lambda o: o.user.encode(), event_time_as_timestamp=True)
    spec = dict(bootstrap=bootstrap, group=group, state_dir=tmp_path / "state",
                storage=f"file://{tmp_path / 'checkpoints'}", params={"input": topic, "output": alerts},
                job=REPO / "examples" / "inactivity_alert.py")
    kill_at_random(lambda i: WorkerProcess(WorkerSpec(**spec), tmp_path / f"worker-{i}.log"), kills=4, seed=5)
    feeder.join(120)
    final = WorkerProcess(WorkerSpec(**spec), tmp_path / "worker-final.log")
    final.wait_assigned()
    wait_for(lambda: len(read_all(bootstrap, alerts)) >= len(expected), 180, 1.0,
             lambda: f"{len(read_all(bootstrap, alerts))} of {len(expected)} alerts")
    assert final.terminate() == 0, final.log_tail()
    problem = check_alerts(expected, read_all(bootstrap, alerts, with_timestamp=True), SILENCE_MS)
    assert problem is None, problem


def test_a_windowed_job_rescales_from_4_to_8_partitions_through_a_savepoint(bootstrap, tmp_path):
    """Half the input on 4 partitions, stop with a savepoint while windows are open, grow
    the input to 8 partitions, resume in a new group (8-partition repartition topic, so
    the windows are re-hashed to their keys' new partitions) and read the rest: every
    window is right and appears once. The savepoint carries time progress: the resumed
    clocks start at the least watermark of the stopped job, so a window it closed cannot
    open again."""
    orders = [TimedOrder(o.id, o.user, o.amount, o.ts, o.id % 4 if o.id < 3_000 else o.partition)
              for o in timed_orders(6_000, 8, seed=14, late_every=9)]
    first, rest = [o for o in orders if o.id < 3_000], [o for o in orders if o.id >= 3_000]
    run = WindowedRun(bootstrap, tmp_path, orders, "tumbling", "final")
    run.expected = expected_windows(orders, rules("tumbling"), resumed_at=3_000)
    port = free_port()
    run.feed(orders=first)
    worker = run.start_worker(http_port=port)
    run.wait_fed()
    wait_for(lambda: _caught_up(bootstrap, run.group, run.input, 4), 120, 0.5, "the first half committed")
    stopped = eos("savepoint", "stop", "--job", f"http://127.0.0.1:{port}", "--target", str(tmp_path / "savepoints"))
    assert stopped.returncode == 0, stopped.stderr
    assert worker.wait(60) == 0, worker.log_tail()
    location = stopped.stdout.strip().splitlines()[-1]
    assert len(run.outputs()) < len(run.expected.windows), "no window was open at the savepoint"

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_partitions([NewPartitions(run.input, 8)])[run.input].result(30)
    run.group = unique_name("win-8")
    run.feed(orders=rest)
    resumed = run.start_worker(extra=("--from-savepoint", location))
    run.wait_fed()
    run.wait_complete(resumed)
    assert resumed.terminate() == 0, resumed.log_tail()
    report = run.check()
    assert report.ok, report.summary()


def _caught_up(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return all(c.offset == consumer.get_watermark_offsets(c, timeout=10)[1] for c in committed)
    finally:
        consumer.close()


def _late_dropped(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'^eos_late_records_dropped_total\{[^}]*operator="per-window"[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def test_the_oracle_sees_late_records_and_catches_a_repeated_or_missing_window():
    """The oracle's self-test on outputs made by hand: right ones pass, a repeated final
    result, a missing window and a wrong count each fail."""
    orders = timed_orders(600, PARTITIONS)
    expected = expected_windows(orders, rules("tumbling"))
    assert expected.late_records > 5, "the input has no late records to drop"
    right = [(user.encode(), f'{{"start": {start}, "end": {start + SIZE_MS}, "value": '
              f'{{"orders": {v["orders"]}, "amount": {v["amount"]}}}}}'.encode(), start + SIZE_MS - 1)
             for (user, start), v in expected.windows.items()]
    assert check_windows(expected, right, "final", SIZE_MS).ok
    assert check_windows(expected, right + right[:1], "final", SIZE_MS).repeated == 1
    assert check_windows(expected, right[1:], "final", SIZE_MS).missing == 1
    wrong = [(k, v.replace(b'"orders": ', b'"orders": 1'), ts) for k, v, ts in right[:1]] + right[1:]
    assert check_windows(expected, wrong, "final", SIZE_MS).wrong == 1


def test_tumbling_final_results_are_the_same_with_and_without_kills(bootstrap, tmp_path):
    """The same input through the same job twice: once undisturbed (which must also drop
    and count exactly the late records the oracle finds), once with workers SIGKILLed
    at random moments, some while windows close. Both give the oracle's windows, and
    the same records, key, value and timestamp, one for one."""
    # Dense late records: a restart that forgot the watermark would take some for on time.
    orders = timed_orders(6_000, PARTITIONS, late_every=7)
    calm = WindowedRun(bootstrap, tmp_path / "calm", orders, "tumbling", "final")
    port = free_port()
    calm.feed()
    worker = calm.start_worker(http_port=port)
    calm.wait_fed()
    calm.wait_complete(worker)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _late_dropped(url) == calm.expected.late_records, 30, 0.5,
             lambda: f"{_late_dropped(url)} late records counted, {calm.expected.late_records} expected")
    assert worker.terminate() == 0, worker.log_tail()
    report = calm.check()
    assert report.ok, report.summary()

    chaotic = WindowedRun(bootstrap, tmp_path / "chaotic", orders, "tumbling", "final")
    report = chaotic.run_through_kills(kills=6, seed=3)
    assert report.ok, report.summary()
    assert sorted(chaotic.outputs()) == sorted(calm.outputs())


def test_hopping_updates_are_exactly_once_under_kills(bootstrap, tmp_path):
    """emit=update on hopping windows: every window's updates count 1, 2, ... n exactly
    once each across kills, and the last is the window's value."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(4_000, PARTITIONS, seed=8), "hopping", "update")
    report = run.run_through_kills(kills=4, seed=17)
    assert report.ok, report.summary()


def test_session_windows_are_exactly_once_under_kills(bootstrap, tmp_path):
    """Sessions grow and merge per user across a repartition while workers are killed:
    every session the oracle finds (its start, end and totals) appears exactly once."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(5_000, PARTITIONS, seed=9, late_every=13), "session",
                      "final")
    assert len(run.expected.windows) > 300 and any(w["orders"] > 3 for w in run.expected.windows.values())
    report = run.run_through_kills(kills=4, seed=41)
    assert report.ok, report.summary()


def test_oracle_catches_at_least_once_updates_under_kills(bootstrap, tmp_path):
    """The oracle's self-test on a real run: without transactions, a worker killed after
    its outputs were flushed but before its offsets were committed sends them again, and
    the oracle must see the repeated updates."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(6_000, PARTITIONS, seed=4), "hopping", "update")
    report = run.run_at_least_once_with_kills()
    assert not report.ok, "the oracle accepted an at-least-once run with kills: it is too weak"
    assert report.bad_updates > 0, report.summary()
