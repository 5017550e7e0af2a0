"""Exactly-once into PostgreSQL, proven by killing real worker processes at every
checkpoint phase (the two the database adds: after the sinks prepared, and between the
Kafka commit and the database commit) and by restarting the database during a run. An
independent oracle reads the tables (tests/harness/table_oracle.py)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from service.checkpointing.faults import PHASES, SINK_PHASES
from tests.harness.pg_scenario import PostgresRunningSum
from tests.harness.postgres import create_database, query
from tests.harness.pg_table_oracle import check_tables
from tests.harness.worker_process import wait_for

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


@pytest.mark.parametrize("phase", SINK_PHASES)
def test_kill_between_the_database_prepare_and_commit(bootstrap, tmp_path, postgres_db, phase):
    """after_prepare: prepared, but the checkpoint never completed, so the next owner rolls
    it back and redoes the work. after_kafka_commit: the checkpoint completed in Kafka and
    its rows are only prepared, so the next owner's recovery commits them."""
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=4_000, chunk=250, chunk_pause_s=0.3, dsn=postgres_db)
    _kill_at(scenario, phase)
    assert query(postgres_db, "SELECT count(*) FROM pg_prepared_xacts")[0][0] > 0, "nothing was left prepared"
    _finish_and_check(scenario)


def test_database_restart_during_the_run(bootstrap, tmp_path, private_postgres):
    """The server restarts while rows are being written: the epoch's transaction is lost
    with its connection, the checkpoint fails, the task is rewound, its recovery waits
    for the server, and nothing is lost or written twice."""
    dsn = create_database(private_postgres.dsn)
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3, dsn=dsn)
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--tolerable-failures", "10"])
    wait_for(lambda: len(scenario.logged_ids()) > 1_000, 120, 0.2, "rows in the table before the restart")
    private_postgres.restart()
    scenario.wait_fed()
    scenario.wait_in_table(worker)
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    assert "cannot be committed" in worker.log_text() or "waiting for PostgreSQL" in worker.log_text(), \
        "the restart went unnoticed"
    kafka, table = scenario.check_all()
    assert kafka.ok, kafka.summary()
    assert table.ok, table.summary()
    assert query(dsn, "SELECT gid FROM pg_prepared_xacts") == []


def test_oracle_catches_at_least_once_into_the_database(bootstrap, tmp_path, postgres_db):
    """The oracle's self-test: at-least-once commits each batch on its own, so a kill
    after the rows committed but before the offsets did writes them again."""
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=4_000, chunk=250, chunk_pause_s=0.3, dsn=postgres_db)
    scenario.start_feeding()
    doomed = scenario.start_worker(fault="after_prepare@3", guarantee="at-least-once")
    assert doomed.wait(120) == -signal.SIGKILL, doomed.log_tail()
    survivor = scenario.start_worker(guarantee="at-least-once")
    scenario.wait_fed()
    scenario.wait_in_table(survivor)
    assert survivor.terminate() == 0, survivor.log_tail()
    table = check_tables(scenario.orders, postgres_db)
    assert not table.ok, "the table oracle accepted an at-least-once run with a kill: it is too weak"
    assert table.repeated_ids, table.summary()


@pytest.mark.chaos
@pytest.mark.parametrize("phase", PHASES)
def test_kill_at_every_checkpoint_phase(bootstrap, tmp_path, postgres_db, phase):
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=5_000, chunk=250, chunk_pause_s=0.3, dsn=postgres_db)
    _kill_at(scenario, phase)
    _finish_and_check(scenario)


@pytest.mark.chaos
def test_random_kills_and_database_restarts(bootstrap, tmp_path, private_postgres):
    """SIGKILLs at random moments, and the server restarted after every third kill."""
    dsn = create_database(private_postgres.dsn)
    scenario = PostgresRunningSum(bootstrap, tmp_path, records=20_000, dsn=dsn)
    rng = random.Random(23)
    scenario.start_feeding()
    for i in range(9):
        worker = scenario.start_worker(extra_args=["--tolerable-failures", "10"])
        time.sleep(rng.uniform(1.0, 3.5))
        assert worker.alive(), f"worker died on its own:\n{worker.log_tail()}"
        if i % 3 == 2:
            private_postgres.restart()
            time.sleep(rng.uniform(0.5, 2.0))
        worker.kill()
    _finish_and_check(scenario)
