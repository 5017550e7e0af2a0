"""PostgreSQL: rows per second into a table, the eos sink against the plain psycopg loop
(bench/plain_postgres_loop.py, COPY batches), on the same input topic, the same server
and database, interleaved repetitions in one run.

The rows are the same for every candidate: one per order (id, user, amount), appended to
a fresh table without indexes. The clock runs from the candidate's start until the table
holds every row, as another session sees it: for eos that is after the last checkpoint's
COMMIT PREPARED. The server is a local PostgreSQL with its durable defaults (fsync on),
or the one POSTGRES_DSN names.

    .venv-bench/bin/python bench/postgres_bench.py --bootstrap localhost:9092 --records 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import workload  # noqa: E402

from tests.harness.postgres import create_database, running_postgres  # noqa: E402

MAIN_PY = sys.executable
CANDIDATES = ("plain-psycopg-copy", "eos-postgres-exactly-once", "eos-postgres-at-least-once")
# A server as a user would run one: durable commits, a few buffers.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "shared_buffers": "256MB",
           "max_wal_size": "2GB"}


@contextlib.contextmanager
def server_dsn():
    given = os.environ.get("POSTGRES_DSN")
    if given:
        yield given
        return
    with running_postgres(DURABLE) as server:
        yield server.dsn


def _argv(name: str, bootstrap: str, topic: str, dsn: str, table: str, records: int, workdir: Path) -> list[str]:
    group = f"bench-pg-{uuid.uuid4().hex[:8]}"
    if name == "plain-psycopg-copy":
        return [MAIN_PY, str(BENCH_DIR / "plain_postgres_loop.py"), "--bootstrap", bootstrap, "--topic", topic,
                "--group", group, "--dsn", dsn, "--table", table, "--records", str(records)]
    guarantee = "exactly-once" if name.endswith("exactly-once") else "at-least-once"
    return [MAIN_PY, "-m", "service.cli", "--log-level", "WARNING", "run", str(BENCH_DIR / "jobs" / "postgres_orders.py"),
            "--bootstrap-servers", bootstrap, "--group", group, "--state-dir", str(workdir / "state"),
            "--checkpoint-storage", f"file://{workdir / 'checkpoints'}", "--checkpoint-interval", "1s",
            "--worker-id", "bench", "--processing-guarantee", guarantee,
            "-p", f"input={topic}", "-p", f"postgres={dsn}", "-p", f"table={table}"]


def run_once(name: str, bootstrap: str, topic: str, dsn: str, records: int, log) -> float:
    """Seconds from start until the table holds `records` rows."""
    table = f"orders_{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (order_id bigint, user_id text, amount bigint)").format(
            sql.Identifier(table)))
        workdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        log_path = workdir / "candidate.log"
        with open(log_path, "wb") as out:
            start = time.monotonic()
            proc = subprocess.Popen(_argv(name, bootstrap, topic, dsn, table, records, workdir), cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            while conn.execute(count).fetchone()[0] < records:
                if proc.poll() is not None and proc.returncode != 0:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.05)
            elapsed = time.monotonic() - start
            rows = conn.execute(count).fetchone()[0]
            if rows != records:
                raise RuntimeError(f"{name} wrote {rows} rows, not {records}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait()
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    log(f"  {name}: {records / elapsed:,.0f} rows/s ({elapsed:.1f}s)")
    return elapsed


def postgres_throughput(bootstrap: str, records: int, users: int, reps: int, log) -> dict:
    topic = workload.ensure_input(bootstrap, records, users, log=log)
    with server_dsn() as admin:
        dsn = create_database(admin, "bench")
        runs: dict[str, list[float]] = {name: [] for name in CANDIDATES}
        for rep in range(reps):
            for name in CANDIDATES:
                runs[name].append(records / run_once(name, bootstrap, topic, dsn, records, log))
    medians = {name: statistics.median(v) for name, v in runs.items()}
    plain = medians["plain-psycopg-copy"]
    return {"records": records, "users": users, "reps": reps, "rows_per_s": runs, "median_rows_per_s": medians,
            "vs_plain": {name: rate / plain for name, rate in medians.items()}}


def table(result: dict) -> str:
    lines = [f"| into PostgreSQL ({result['records']:,} rows, 4 partitions) | rows/s (median) | vs plain loop |",
             "|---|---:|---:|"]
    for name in CANDIDATES:
        lines.append(f"| {name} | {result['median_rows_per_s'][name]:,.0f} | {result['vs_plain'][name]:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), required=False)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    result = postgres_throughput(args.bootstrap, args.records, args.users, args.reps, print)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
