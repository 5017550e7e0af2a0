"""Tables and joins, exactly once, proven against the real broker with SIGKILLs.

Workers run `eos run tests/jobs/<job>.py` as users run jobs, from outside the
repository. Both sides of every join receive data while workers are killed at random
moments; the independent oracles (tests/harness/table_oracle.py) recompute the results
from the generated input.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.harness import table_oracle as oracle
from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.worker_process import REPO, WorkerProcess, WorkerSpec, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

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

    def finish(self, done, what: str, timeout: float = 180) -> None:
        """A last worker runs until `done(outputs)` holds, then stops cleanly."""
        worker = self.start_worker()

        def complete() -> bool:
            assert worker.alive(), worker.log_tail()
            return done(self.outputs())

        wait_for(complete, timeout, 1.0, what)
        assert worker.terminate() == 0, worker.log_tail()


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
    events = oracle.enrichment_events(clicks=2_000, users=40, seed=4)
    expected = oracle.expected_enrichment(events)
    run = JoinRun(bootstrap, tmp_path, "enrich_clicks.py", ["users", "clicks"], extra=("--max-task-idle", "1s"))
    run.feed(events, chunk=150, pause_s=0.3)
    run.kill_at_random(kills=3, seed=8, guarantee="at-least-once")
    run.wait_fed()
    run.finish(lambda outputs: len({o[1] for o in outputs}) >= len(expected), "every click enriched")
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
