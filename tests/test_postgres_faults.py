"""Faults of the database under a running job (examples/running_sum_postgres.py with its
timeouts shortened): a lost connection, a lock held too long, a row the table refuses
(to the error policy, named by key and checkpoint) and a full disk. Each must give a
clear error, and the tables must end with every input reflected exactly once."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.harness.kafka import read_all
from tests.harness.pg_scenario import PostgresRunningSum
from tests.harness.postgres import SERVER_USER, create_database, dsn_with, query
from tests.harness.tcp_proxy import TcpProxy
from tests.harness.worker_process import REPO, wait_for

pytestmark = pytest.mark.kafka

TUNED = REPO / "tests" / "jobs" / "running_sum_postgres_tuned.py"
PATIENT = ["--tolerable-failures", "1000"]
# The worker's report of a sink's lost connection, whichever phase the sink was in and
# whoever reports it: its cause is described as "(connection)" (connectors/postgres/errors.py).
LOST_CONNECTION = re.compile(r" (WARNING|ERROR) .*\(connection\)")
# Orders whose log row a CHECK constraint refuses: ids 5, 1002, 1999, 2996, 3993.
REFUSING_LOG = ("CREATE TABLE order_log (order_id bigint CONSTRAINT not_this_order CHECK (mod(order_id, 997) <> 5), "
                "user_id text, amount bigint, total bigint, orders bigint)")


def _scenario(bootstrap, tmp_path, dsn: str, records: int = 4_000, **kwargs) -> PostgresRunningSum:
    return PostgresRunningSum(bootstrap, tmp_path, records=records, chunk=250, chunk_pause_s=0.3, dsn=dsn,
                              spec_overrides={"job": TUNED}, **kwargs)


def _finish(scenario: PostgresRunningSum, worker, refused: set[int] = frozenset()) -> None:
    scenario.wait_fed()
    scenario.wait_in_table(worker, refused=refused)
    scenario.wait_complete(worker)
    assert worker.terminate() == 0, worker.log_tail()
    kafka, table = scenario.check_all(refused)
    assert kafka.ok, kafka.summary()
    assert table.ok, table.summary()
    assert query(scenario.read_dsn, "SELECT gid FROM pg_prepared_xacts") == [], "a prepared transaction was left"


def test_lost_connection(bootstrap, tmp_path, private_postgres):
    """Every connection to the server is cut (a proxy between them closes) and comes back."""
    direct = create_database(private_postgres.dsn)
    proxy = TcpProxy("127.0.0.1", private_postgres.port)
    try:
        scenario = _scenario(bootstrap, tmp_path, dsn_with(direct, port=str(proxy.port)), records=6_000,
                             read_dsn=direct)
        scenario.start_feeding()
        worker = scenario.start_worker(extra_args=PATIENT)
        wait_for(lambda: len(scenario.logged_ids()) > 1_000, 120, 0.2, "rows before the cut")
        proxy.cut()
        # The cut lands while a sink prepares, commits after a completed checkpoint, or
        # recovers; each phase's report ends with the cause, a lost connection.
        wait_for(lambda: LOST_CONNECTION.search(worker.log_text()), 60, 0.2, "the worker to notice the lost connection")
        proxy.restore()
        _finish(scenario, worker)
    finally:
        proxy.close()


def test_lock_held_past_the_lock_timeout(bootstrap, tmp_path, postgres_db):
    """Another session locks the log table: the sink's statement gives up after its lock
    timeout with an error naming the table, the checkpoint fails and is redone."""
    scenario = _scenario(bootstrap, tmp_path, postgres_db, job_params={"lock_timeout_s": "1"})
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=PATIENT)
    wait_for(lambda: len(scenario.logged_ids()) > 500, 120, 0.2, "rows before the lock")
    with psycopg.connect(postgres_db) as locker:
        locker.execute("LOCK TABLE order_log IN ACCESS EXCLUSIVE MODE")
        wait_for(lambda: "lock timeout" in worker.log_text(), 60, 0.2, "the lock timeout")
        locker.rollback()
    line = next(line for line in worker.log_text().splitlines() if "lock timeout" in line)
    assert "table public.order_log" in line and "checkpoint" in line and "55P03" in line, line
    _finish(scenario, worker)


REFUSED = {i for i in range(4_000) if i % 997 == 5}


def test_refused_row_goes_to_the_dead_letter_topic(bootstrap, tmp_path, postgres_db):
    """Under --error-policy dead-letter a row the table refuses is sent, as its input
    record, to the dead-letter topic in the same transaction, with headers naming the
    table, the record and the checkpoint; every other row is written once."""
    query(postgres_db, REFUSING_LOG)
    scenario = _scenario(bootstrap, tmp_path, postgres_db)
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=["--error-policy", "dead-letter"])
    _finish(scenario, worker, refused=REFUSED)
    letters = read_all(bootstrap, f"{scenario.group}-dlq", with_headers=True)
    ids = sorted(json.loads(value)["id"] for _, value, _ in letters)
    assert ids == sorted(REFUSED), ids
    for _, _, headers in letters:
        message = dict(headers)["eos.error.message"].decode()
        assert "order_log" in message and "not_this_order" in message and "in checkpoint" in message, message


def test_refused_row_stops_the_job_naming_it(bootstrap, tmp_path, postgres_db):
    """Under the default policy (fail) the worker exits 2 with one line naming the table,
    the row, the record, the constraint and the checkpoint; nothing of that checkpoint
    is committed and nothing is left prepared."""
    query(postgres_db, REFUSING_LOG)
    scenario = _scenario(bootstrap, tmp_path, postgres_db)
    scenario.feed_all_now()
    worker = scenario.start_worker()
    assert worker.wait(120) == 2, worker.log_tail()
    line = next(line for line in worker.log_text().splitlines() if "stopping on a bad record" in line)
    named = re.search(r"refused the row \((\d+),", line)
    assert named and int(named.group(1)) in REFUSED, line
    assert "public.order_log" in line and "not_this_order" in line and "record key" in line, line
    assert "in checkpoint" in line and "offset" in line, line
    assert query(postgres_db, "SELECT gid FROM pg_prepared_xacts") == []
    assert query(postgres_db, "SELECT count(*) FROM order_log WHERE order_id = %s", (int(named.group(1)),)) == [(0,)]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 192 KiB tmpfs the server may write to (needs root), grown on demand."""
    mount = Path("/tmp") / f"eos-tiny-disk-{tmp_path.name}"
    mount.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=192k,mode=0700,uid={SERVER_USER},gid={SERVER_USER}",
                           "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full disk (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk(bootstrap, tmp_path, private_postgres, tiny_disk):
    """The tables live in a tablespace on a disk that fills up: checkpoints fail with the
    server's 'no space left' (SQLSTATE 53100) naming the table and checkpoint, nothing
    commits meanwhile, and once the disk has room the job carries on as if nothing
    happened."""
    dsn = create_database(private_postgres.dsn)
    query(dsn, f"CREATE TABLESPACE tiny LOCATION '{tiny_disk}'")
    query(dsn, "CREATE TABLE order_log (order_id bigint, user_id text, amount bigint, total bigint, orders bigint) "
               "TABLESPACE tiny")
    scenario = _scenario(bootstrap, tmp_path, dsn, records=6_000)
    scenario.start_feeding()
    worker = scenario.start_worker(extra_args=PATIENT)
    wait_for(lambda: "53100" in worker.log_text(), 120, 0.2, "the disk to fill")
    line = next(line for line in worker.log_text().splitlines() if "53100" in line)
    assert "table public.order_log" in line and "checkpoint" in line, line
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    _finish(scenario, worker)
