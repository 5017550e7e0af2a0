"""Tables and joins, exactly once, proven against the real broker with SIGKILLs.

Workers run `eos run tests/jobs/<job>.py` as users run jobs, from outside the
repository. Both sides of every join receive data while workers are killed at random
moments; the independent oracles (tests/harness/table_oracle.py) recompute the results
from the generated input.
"""

from __future__ import annotations

import json
import random
import signal
import struct
from collections import Counter

import pytest

from service.checkpointing.faults import PHASES, SINK_PHASES
from tests.harness import table_oracle as oracle
from tests.harness.kafka import create_topics, produce, read_all, unique_name
from tests.harness.ports import free_port
from tests.harness.savepoints import ControlledWorker, stop_with_savepoint
from tests.harness.join_run import PARTITIONS, JoinRun
from tests.harness.worker_process import WorkerProcess, WorkerSpec, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

def test_each_click_meets_its_users_profile_as_of_its_time_exactly_once_under_kills(bootstrap, tmp_path):
    """Profile changes race the clicks (each chunk's changes are produced before its
    clicks, and the worker waits up to --max-task-idle for an input with nothing
    buffered): every click appears once, with the version its user had at its time."""
    events = oracle.enrichment_events(clicks=3_000, users=40, seed=3)
    expected = oracle.expected_enrichment(events)
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], extra=("--max-task-idle", "1s"))
    run.feed(events, chunk=150, pause_s=0.3)
    run.kill_at_random(kills=4, seed=7)
    run.wait_fed()
    run.finish(lambda outputs: len(outputs) >= len(expected), "every click enriched")
    report = oracle.check_enrichment(expected, run.outputs())
    assert report.ok, report.summary()


def test_the_enrichment_oracle_catches_an_at_least_once_run(bootstrap, tmp_path):
    """Without transactions, a worker killed after its outputs went out but before its
    offsets were committed has them produced again by its successor: the oracle must
    see those repeats."""
    events = oracle.enrichment_events(clicks=2_000, users=40, seed=4)
    expected = oracle.expected_enrichment(events)
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], extra=("--max-task-idle", "1s"))
    doomed = run.start_worker("at-least-once", fault="after_persist@3")
    wait_for(lambda: "assigned" in doomed.log_text() or not doomed.alive(), 60, 0.2, "the doomed worker's tasks")
    run.feed(events, chunk=150, pause_s=0.3)
    assert doomed.wait(120) == -signal.SIGKILL, doomed.log_tail()
    run.wait_fed()
    run.finish(lambda outputs: len({o[1] for o in outputs}) >= len(expected), "every click enriched",
               guarantee="at-least-once")
    report = oracle.check_enrichment(expected, run.outputs())
    assert not report.ok and any("appears" in p for p in report.problems), report.summary()


def test_a_table_table_join_ends_as_the_join_of_the_final_tables_under_kills(bootstrap, tmp_path):
    events = oracle.table_events(changes=4_000, keys=300, seed=11)
    tables = oracle.final_tables(events)
    expected = oracle.expected_outer_join(tables["left"], tables["right"])
    run = JoinRun(bootstrap, tmp_path, "table_join.py", ["left", "right"])
    run.feed(events, chunk=200, pause_s=0.3)
    run.kill_at_random(kills=4, seed=13)
    run.wait_fed()
    run.finish(lambda outputs: oracle.as_table(outputs) == expected, "the joined table to match")
    outputs = run.outputs()
    report = oracle.compare_tables(expected, oracle.as_table(outputs))
    assert report.ok, report.summary()
    assert any(value is None for _, value in outputs), "no result disappeared: the input should delete some"


def test_counts_per_group_retract_rows_that_move_away_exactly_once_under_kills(bootstrap, tmp_path):
    countries = ["de", "fr", "it", "es", "pt", "nl"]
    events = oracle.table_events(changes=4_000, keys=200, seed=17, roles=("users",), delete_share=0.1,
                                 value=lambda rng, i: {"country": rng.choice(countries)})
    final = oracle.final_tables(events)["users"]
    expected = {country: oracle.expected_group_counts(final).get(country, 0) for country in countries}
    run = JoinRun(bootstrap, tmp_path, "users_per_country.py", ["users"])
    run.feed(events, chunk=200, pause_s=0.3)
    run.kill_at_random(kills=4, seed=19)
    run.wait_fed()
    run.finish(lambda outputs: {k: v for k, v in oracle.as_table(outputs).items()} == expected,
               "the counts to match the final table")
    report = oracle.compare_tables(expected, oracle.as_table(run.outputs()))
    assert report.ok, report.summary()


def test_a_stream_stream_join_emits_every_pair_within_its_bound_once_under_kills(bootstrap, tmp_path):
    events = oracle.stream_join_events(records=2_500, keys=300, seed=23)
    expected = oracle.expected_pairs(events, within_ms=10_000)
    assert sum(expected.values()) > 500
    run = JoinRun(bootstrap, tmp_path, "order_payments.py", ["orders", "payments"])
    run.feed(events, chunk=150, pause_s=0.3)
    run.kill_at_random(kills=4, seed=29)
    run.wait_fed()
    run.finish(lambda outputs: len(outputs) >= sum(expected.values()), "every pair")
    report = oracle.check_pairs(expected, run.outputs())
    assert report.ok, report.summary()


def test_inputs_that_meet_in_a_task_must_have_the_same_partitions(bootstrap, tmp_path):
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], partitions={"users": 3})
    worker = run.start_worker()
    assert worker.wait(60) == 1, worker.log_tail()
    assert "must have the same number of partitions" in worker.log_text(), worker.log_tail()


def test_a_left_stream_stream_join_emits_each_order_without_payment_once_its_time_has_passed(bootstrap, tmp_path):
    events = oracle.stream_join_events(records=2_000, keys=300, seed=31)
    events += oracle.flush_events(events, PARTITIONS, ("orders", "payments"))
    expected = oracle.expected_pairs(events, within_ms=10_000)
    unmatched = oracle.expected_unmatched_orders(events, within_ms=10_000)
    assert len(unmatched) > 100
    run = JoinRun(bootstrap, tmp_path, "order_payments.py", ["orders", "payments"])
    run.extra += ["-p", "how=left"]
    run.feed(events, chunk=150, pause_s=0.3)
    run.kill_at_random(kills=3, seed=37)
    run.wait_fed()
    run.finish(lambda outputs: len(outputs) >= sum(expected.values()) + len(unmatched), "every pair and lone order")
    report = oracle.check_pairs(expected, run.outputs(), unmatched)
    assert report.ok, report.summary()


def test_a_global_table_is_read_whole_by_each_worker_and_met_by_a_value_of_the_record(bootstrap, tmp_path):
    """The countries topic has 3 partitions, the orders 4: no co-partitioning. Both
    workers read every country before they process an order; a country renamed later
    is seen by the orders produced after it, also by a worker restarted meanwhile."""
    countries = {f"c{i}": {"name": f"country-{i}"} for i in range(30)}
    run = JoinRun(bootstrap, tmp_path, "orders_with_country.py", ["countries", "orders"],
                  partitions={"countries": 3})
    first = [oracle.Event("countries", code, row, oracle.base_time()) for code, row in countries.items()]
    run.feed(first, chunk=len(first), pause_s=0)
    run.wait_fed()
    orders = [oracle.Event("orders", str(i), {"id": i, "country": f"c{i % 33}"}, oracle.base_time() + i)
              for i in range(2_000)]
    workers = [run.start_worker() for _ in range(1)]
    spec_w2 = WorkerSpec(bootstrap=bootstrap, group=run.group, state_dir=tmp_path / "state-w2",
                         storage=f"file://{tmp_path / 'checkpoints'}", job=run.job, worker_id="w2",
                         params={**run.topics, "output": run.output})
    workers.append(WorkerProcess(spec_w2, tmp_path / "w2.log"))
    run.feed(orders[:1_000], chunk=250, pause_s=0.2)
    run.wait_fed()
    wait_for(lambda: len(run.outputs()) >= 1_000, 120, 1.0, "the first orders")
    workers[0].kill()
    run.feed([oracle.Event("countries", "c1", {"name": "renamed"}, oracle.base_time() + 5_000)], chunk=1, pause_s=0)
    run.wait_fed()
    workers[0] = run.start_worker()
    _wait_until_every_partition_sees(run, "c1", "renamed")
    run.feed(orders[1_000:], chunk=250, pause_s=0.2)
    run.wait_fed()
    wait_for(lambda: len({json.loads(v)["id"] for _, v in run.outputs()} & set(range(2_000))) >= 2_000, 120, 1.0,
             "every order")
    for worker in workers:
        assert worker.terminate() == 0, worker.log_tail()
    seen = {}
    for _, value in run.outputs():
        row = json.loads(value)
        assert row["id"] not in seen, f"order {row['id']} appears twice"
        seen[row["id"]] = row["country"]
    seen = {i: name for i, name in seen.items() if i < PROBES}
    for i in range(2_000):
        code = f"c{i % 33}"
        name = None if code not in countries else countries[code]["name"]
        if code == "c1" and i >= 1_000:
            name = "renamed"
        assert seen[i] == name, f"order {i} (country {code}) met {seen[i]!r}, not {name!r}"


def test_a_worker_reading_a_global_table_leaves_the_group_when_it_stops(bootstrap, tmp_path):
    """The global table's partitions are read by the worker's consumer beside the ones the
    group assigned; they are no part of the group's assignment, and a stopping worker
    that has given the group's partitions back has left, with the table still read."""
    run = JoinRun(bootstrap, tmp_path, "orders_with_country.py", ["countries", "orders"],
                  partitions={"countries": 3})
    run.feed([oracle.Event("countries", "c1", {"name": "one"}, oracle.base_time())], chunk=1, pause_s=0)
    run.wait_fed()
    worker = run.start_worker()
    worker.wait_assigned()
    assert worker.terminate() == 0, worker.log_tail()
    log = worker.log_text()
    assert "left the group; the remaining workers take over" in log, log


PROBES = 1_000_000  # order ids from here on are probes, not checked one by one


def _wait_until_every_partition_sees(run: JoinRun, code: str, name: str) -> None:
    """Sends a probe order of country `code` to every input partition until each
    partition's worker answers with `name`: its global table has read the change."""
    probes = oracle.keys_covering(PARTITIONS, "probe-")
    sent = iter(range(PROBES, PROBES + 100_000))
    waiting = set(probes)

    def seen_everywhere() -> bool:
        current = {key: next(sent) for key in waiting}
        produce(run.bootstrap, run.topics["orders"],
                [(key.encode(), json.dumps({"id": i, "country": code}).encode()) for key, i in current.items()])
        wait_for(lambda: {i for i in current.values()} <= {json.loads(v)["id"] for _, v in run.outputs()}, 60, 0.5,
                 "the probes' outputs")
        answers = {json.loads(v)["id"]: json.loads(v)["country"] for _, v in run.outputs()}
        waiting.difference_update(key for key, i in current.items() if answers[i] == name)
        return not waiting

    wait_for(seen_everywhere, 120, 0.5, f"every partition's worker to see {code} as {name!r}")


def test_merged_streams_go_to_several_topics_each_with_its_own_serde(bootstrap, tmp_path):
    rng = random.Random(41)
    orders = [{"id": i, "user": f"u{rng.randrange(25)}", "amount": rng.randrange(1, 100)} for i in range(3_000)]
    events = [oracle.Event(rng.choice(["web", "shop"]), str(o["id"]), o, oracle.base_time() + o["id"]) for o in orders]
    run = JoinRun(bootstrap, tmp_path, "merged_orders.py", ["web", "shop"])
    outputs = {"all": unique_name("all"), "amounts": unique_name("amounts")}
    create_topics(bootstrap, list(outputs.values()), PARTITIONS)
    run.extra += [arg for name, topic in outputs.items() for arg in ("-p", f"{name}={topic}")]
    run.feed(events, chunk=300, pause_s=0.3)
    run.kill_at_random(kills=2, seed=43)
    run.wait_fed()
    run.finish(lambda totals: len(totals) >= len(orders) and len(read_all(bootstrap, outputs["amounts"])) >= len(orders),
               "every order's total and amount")  # two stages after the merge: each finishes on its own
    everything = read_all(bootstrap, outputs["all"])
    assert sorted(json.loads(v)["id"] for _, v in everything) == list(range(len(orders)))
    amounts = Counter((k.decode(), struct.unpack(">q", v)[0]) for k, v in read_all(bootstrap, outputs["amounts"]))
    assert amounts == Counter((o["user"], o["amount"]) for o in orders)
    counts: dict[str, list[int]] = {}
    for _, value in run.outputs():
        total = json.loads(value)
        counts.setdefault(total["user"], []).append(total["count"])
    for user, seen in counts.items():
        assert seen == list(range(1, len(seen) + 1)), f"{user}: counts {seen[:20]}..."
    assert {u: len(c) for u, c in counts.items()} == Counter(o["user"] for o in orders)


class TotalsWithProfile:
    """totals_with_profile.py over 300 profile changes of 30 users, then 3,000 orders fed
    in chunks; the expected table is the final sum per user with its last profile."""

    def __init__(self, bootstrap: str, tmp_path, seed: int, extra: tuple[str, ...] = ()) -> None:
        rng = random.Random(seed)
        self.profiles = [oracle.Event("users", f"u{u}", {"version": v}, oracle.base_time() + v)
                         for v, u in enumerate(rng.randrange(30) for _ in range(300))]
        self.orders = [{"id": i, "user": f"u{rng.randrange(30)}", "amount": rng.randrange(1, 50)}
                       for i in range(3_000)]
        self.run = JoinRun(bootstrap, tmp_path, "totals_with_profile.py", ["users", "orders"],
                           partitions={"users": 3, "orders": 5}, extra=extra)

    def feed(self, chunk: int) -> None:
        self.run.feed(self.profiles, chunk=300, pause_s=0)
        self.run.wait_fed()
        self.run.feed([oracle.Event("orders", str(o["id"]), o, oracle.base_time() + 1_000 + o["id"])
                       for o in self.orders], chunk=chunk, pause_s=0.3)

    def finish_and_check(self) -> None:
        self.run.wait_fed()
        tables = oracle.final_tables(self.profiles)["users"]
        sums = Counter()
        for order in self.orders:
            sums[order["user"]] += order["amount"]
        expected = {user: {"sum": total, "version": tables.get(user, {}).get("version")}
                    for user, total in sums.items()}
        self.run.finish(lambda outputs: oracle.as_table(outputs) == expected, "the joined totals")
        report = oracle.compare_tables(expected, oracle.as_table(self.run.outputs()))
        assert report.ok, report.summary()


def test_a_stream_aggregate_as_a_table_meets_a_table_from_a_topic_across_a_repartition(bootstrap, tmp_path):
    """Totals per user (repartitioned by user, kept as a table) joined with the users'
    profiles: the repartition topic takes the profiles' partitions and key serde."""
    totals = TotalsWithProfile(bootstrap, tmp_path, seed=47)
    totals.feed(chunk=300)
    totals.run.kill_at_random(kills=2, seed=53)
    totals.finish_and_check()


def test_a_join_across_a_repartition_stops_with_a_savepoint_and_resumes_from_it(bootstrap, tmp_path):
    """The join task reads a repartition topic and the users topic: its users partition
    is held only once the repartition input is drained, so the savepoint completes while
    orders flow, and the totals resumed from it count every order once."""
    port = free_port()
    totals = TotalsWithProfile(bootstrap, tmp_path, seed=73, extra=("--http-port", str(port)))
    totals.feed(chunk=150)
    worker = ControlledWorker(totals.run.start_worker(), port).wait_ready()
    wait_for(lambda: len(totals.run.outputs()) >= 300, 90, 0.5, "the first totals")
    totals.run.extra = ["--from-savepoint", stop_with_savepoint([worker], tmp_path / "savepoints")]
    totals.finish_and_check()


def test_keys_placed_by_another_partitioner_are_refused_naming_the_record(bootstrap, tmp_path):
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"])
    from statestore.murmur2 import partition_for

    wrong = (partition_for(b"u1", PARTITIONS) + 1) % PARTITIONS
    produce(bootstrap, run.topics["users"], [(b"u1", b'{"version": 1}')], partition=wrong)
    worker = run.start_worker()
    assert worker.wait(60) == 1, worker.log_tail()
    assert f"partition {wrong} offset 0 holds key b'u1'" in worker.log_text(), worker.log_tail()


def test_a_join_stops_with_a_savepoint_and_resumes_from_it_exactly_once(bootstrap, tmp_path):
    events = oracle.enrichment_events(clicks=3_000, users=40, seed=59)
    expected = oracle.expected_enrichment(events)
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], extra=("--max-task-idle", "1s"))
    run.feed(events, chunk=150, pause_s=0.3)
    port = free_port()
    run.extra += ["--http-port", str(port)]
    worker = ControlledWorker(run.start_worker(), port).wait_ready()
    wait_for(lambda: len(run.outputs()) >= 500, 90, 0.5, "the first clicks")
    location = stop_with_savepoint([worker], tmp_path / "savepoints")
    assert len(run.outputs()) < len(expected), "the savepoint was not taken mid-run"
    run.extra = [a for a in run.extra if a not in ("--http-port", str(port))] + ["--from-savepoint", location]
    run.wait_fed()
    run.finish(lambda outputs: len(outputs) >= len(expected), "every click enriched")
    report = oracle.check_enrichment(expected, run.outputs())
    assert report.ok, report.summary()


def test_a_savepoint_leaves_a_click_that_waits_for_its_table_unprocessed(bootstrap, tmp_path):
    """A click waits (--max-task-idle) for the users partition to bring anything earlier
    when the savepoint is taken. The savepoint must not run it against the table as it
    stands: a profile change of an earlier time, produced after the savepoint, is what
    the click meets when the job resumes."""
    t0 = oracle.base_time()
    before = [oracle.Event("users", "u1", {"version": 1}, t0), oracle.Event("clicks", "u1", {"id": 0}, t0 + 10)]
    # The later change tells the resumed task that nothing earlier is still to come.
    after = [oracle.Event("users", "u1", {"version": 2}, t0 + 5), oracle.Event("users", "u1", {"version": 3}, t0 + 20)]
    expected = oracle.expected_enrichment(before + after)
    assert expected == {0: 2}
    port = free_port()
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"],
                  extra=("--max-task-idle", "120s", "--http-port", str(port)))
    run.feed(before, chunk=len(before), pause_s=0)
    run.wait_fed()
    worker = ControlledWorker(run.start_worker(), port).wait_ready()
    wait_for(lambda: worker.metric("eos_records_in_total", default=0) == len(before), 60, 0.2,
             "the worker to hold the profile and the click")
    location = stop_with_savepoint([worker], tmp_path / "savepoints")
    run.feed(after, chunk=len(after), pause_s=0)
    run.wait_fed()
    run.extra = ["--max-task-idle", "120s", "--from-savepoint", location]
    run.finish(lambda outputs: len(outputs) >= len(expected), "the click enriched")
    report = oracle.check_enrichment(expected, run.outputs())
    assert report.ok, report.summary()


@pytest.mark.parametrize("phase", [p for p in PHASES if p not in SINK_PHASES])
def test_a_kill_at_each_checkpoint_phase_of_a_task_with_two_inputs_loses_and_repeats_nothing(bootstrap, tmp_path,
                                                                                             phase):
    """Both inputs' offsets commit in the checkpoint's one transaction: killed at any
    phase, the worker's successor goes on from the last checkpoint, and every click
    appears once, with the profile version of its time."""
    events = oracle.enrichment_events(clicks=1_500, users=30, seed=61)
    expected = oracle.expected_enrichment(events)
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], extra=("--max-task-idle", "1s"))
    doomed = run.start_worker(fault=f"{phase}@3")
    wait_for(lambda: "assigned" in doomed.log_text() or not doomed.alive(), 60, 0.2, "the doomed worker's tasks")
    run.feed(events, chunk=100, pause_s=0.2)  # input arrives over more than three checkpoints
    assert doomed.wait(120) == -signal.SIGKILL, f"fault {phase} did not fire:\n{doomed.log_tail()}"
    run.wait_fed()
    run.finish(lambda outputs: len(outputs) >= len(expected), "every click enriched")
    report = oracle.check_enrichment(expected, run.outputs())
    assert report.ok, report.summary()


def test_tasks_of_a_join_move_between_workers_with_both_their_partitions(bootstrap, tmp_path):
    """A second worker joins and the first is killed later: each task's two partitions
    move together (the group assigns the lead, the task takes its partner along), and
    every click still appears once, with the version of its time."""
    events = oracle.enrichment_events(clicks=3_000, users=40, seed=67)
    expected = oracle.expected_enrichment(events)
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], extra=("--max-task-idle", "1s"))
    run.feed(events, chunk=150, pause_s=0.3)
    first = run.start_worker()
    wait_for(lambda: len(run.outputs()) >= 500, 90, 0.5, "the first clicks")
    second = WorkerProcess(WorkerSpec(bootstrap=bootstrap, group=run.group, state_dir=tmp_path / "state-w2",
                                      storage=f"file://{tmp_path / 'checkpoints'}", job=run.job, worker_id="w2",
                                      params={**run.topics, "output": run.output}, extra_args=run.extra),
                           tmp_path / "w2.log")
    wait_for(lambda: "assigned" in second.log_text() and len(run.outputs()) >= 1_500, 120, 0.5,
             "the second worker to take tasks over while clicks flow")
    first.kill()
    run.wait_fed()
    wait_for(lambda: len(run.outputs()) >= len(expected), 180, 1.0, "every click enriched")
    assert second.terminate() == 0, second.log_tail()
    report = oracle.check_enrichment(expected, run.outputs())
    assert report.ok, report.summary()


def test_an_input_partition_that_brings_nothing_stops_holding_back_a_joins_watermark(bootstrap, tmp_path):
    """No payment ever lands in partition 3: with an idle timeout the orders there still
    expire, and the left join emits those that met nothing."""
    from statestore.murmur2 import partition_for

    events = oracle.stream_join_events(records=1_000, keys=200, seed=71)
    events += oracle.flush_events(events, PARTITIONS, ("orders", "payments"))
    events = [e for e in events if e.topic == "orders" or partition_for(e.key.encode(), PARTITIONS) != 3]
    expected = oracle.expected_pairs(events, within_ms=10_000)
    unmatched = oracle.expected_unmatched_orders(events, within_ms=10_000)
    assert any(partition_for(e.key.encode(), PARTITIONS) == 3 for e in events
               if e.topic == "orders" and e.value.get("order") in unmatched)
    run = JoinRun(bootstrap, tmp_path, "order_payments.py", ["orders", "payments"])
    run.extra += ["-p", "how=left", "-p", "idle_ms=2000"]
    run.feed(events, chunk=500, pause_s=0.1)
    run.wait_fed()
    run.finish(lambda outputs: len(outputs) >= sum(expected.values()) + len(unmatched), "every pair and lone order")
    report = oracle.check_pairs(expected, run.outputs(), unmatched)
    assert report.ok, report.summary()

