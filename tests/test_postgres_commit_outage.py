"""A database lost between a checkpoint's Kafka commit and its sinks' commits: the loop
waits for it once per checkpoint, not once per sink."""

from __future__ import annotations

import time

from psycopg.conninfo import conninfo_to_dict

from connectors.postgres.sink import PostgresSink
from connectors.two_phase import SinkContext, commit_prepared
from tests.harness.postgres import dsn_with, query
from tests.harness.tcp_proxy import TcpProxy

COMMIT_TIMEOUT_S = 3.0
TASKS = 4


def _no_rejects(error, msg) -> None:
    raise AssertionError(f"a row was refused: {error}")


def test_the_sinks_of_a_checkpoint_share_one_commit_deadline(postgres_db):
    """Four tasks' sinks prepared checkpoint 1, then the server becomes unreachable: the
    first commit retries for commit_timeout_s, the others give up at their first failure
    (before the fix, each waited its own timeout: four times as long). Each keeps its
    commit pending, and recovery commits it once the server is back."""
    port = int(conninfo_to_dict(postgres_db)["port"])
    proxy = TcpProxy("127.0.0.1", port)
    try:
        sink = PostgresSink(dsn_with(postgres_db, port=str(proxy.port)), "totals", columns={"task": "text"},
                            key=["task"], commit_timeout_s=COMMIT_TIMEOUT_S, recovery_timeout_s=30.0)
        writers = []
        for task in range(TASKS):
            writer = sink.open(SinkContext("outage", f"in-{task}", "db", "tok", True, 60.0, _no_rejects))
            writer.recover(0)
            writer.begin()
            writer.write(f"in-{task}", {"task": f"in-{task}"}, None)
            writer.prepare(1)
            writer.begin()
            writers.append(writer)
        assert len(query(postgres_db, "SELECT gid FROM pg_prepared_xacts")) == TASKS

        proxy.cut()
        began = time.monotonic()
        commit_prepared(writers, 1)
        waited = time.monotonic() - began
        assert COMMIT_TIMEOUT_S - 0.5 < waited < COMMIT_TIMEOUT_S + 2.0, f"waited {waited:.1f}s"
        assert all(w.pending for w in writers), "a commit that could not be made must stay pending"
        assert query(postgres_db, "SELECT task FROM totals") == []

        proxy.restore()
        for writer in writers:
            writer.recover(1)
            writer.close()
        assert sorted(t for (t,) in query(postgres_db, "SELECT task FROM totals")) == [f"in-{t}" for t in range(TASKS)]
        assert query(postgres_db, "SELECT gid FROM pg_prepared_xacts") == []
    finally:
        proxy.close()
