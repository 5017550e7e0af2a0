"""Exactly-once into PostgreSQL, proven by killing real worker processes at every
checkpoint phase (the two the database adds: after the sinks prepared, and between the
Kafka commit and the database commit) and by restarting the database during a run. An
independent oracle reads the tables (tests/harness/table_oracle.py)."""

from __future__ import annotations

import signal

import pytest

from tests.harness.pg_scenario import PostgresRunningSum
from tests.harness.postgres import query

pytestmark = pytest.mark.kafka


def _kill_at(scenario: PostgresRunningSum, phase: str, at: int = 3) -> None:
    scenario.start_feeding()
    doomed = scenario.start_worker(fault=f"{phase}@{at}")
    assert doomed.wait(120) == -signal.SIGKILL, f"fault {phase} did not fire:\n{doomed.log_tail()}"
    assert f"killing this worker at {phase}" in doomed.log_tail(), doomed.log_tail()


def _finish_and_check(scenario: PostgresRunningSum) -> None:
    survivor = scenario.start_worker()
    scenario.wait_fed()
    scenario.wait_in_table(survivor)
    scenario.wait_complete(survivor)
    assert survivor.terminate() == 0, survivor.log_tail()
    kafka, table = scenario.check_all()
    assert kafka.ok, kafka.summary()
    assert table.ok, table.summary()
    assert table.log_rows == len(scenario.orders)
    assert query(scenario.dsn, "SELECT gid FROM pg_prepared_xacts") == [], "a prepared transaction was left behind"


def test_kill_between_the_kafka_commit_and_the_database_commit(bootstrap, tmp_path, postgres_db):
    """The checkpoint completed in Kafka, its rows are only prepared: the next owner's
    recovery commits them."""
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=4_000, chunk=250, chunk_pause_s=0.3, dsn=postgres_db)
    _kill_at(scenario, "after_kafka_commit")
    assert query(postgres_db, "SELECT count(*) FROM pg_prepared_xacts")[0][0] > 0, "nothing was left prepared"
    _finish_and_check(scenario)


def test_kill_after_the_database_prepared(bootstrap, tmp_path, postgres_db):
    """Prepared, but the checkpoint never completed: the next owner rolls it back and
    redoes the work."""
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=4_000, chunk=250, chunk_pause_s=0.3, dsn=postgres_db)
    _kill_at(scenario, "after_prepare")
    assert query(postgres_db, "SELECT count(*) FROM pg_prepared_xacts")[0][0] > 0, "nothing was left prepared"
    _finish_and_check(scenario)
