"""PostgreSQL: rows per second into a table, the eos sink against the plain psycopg loop
(bench/plain_postgres_loop.py, COPY batches), on the same input topic, the same server
and database, interleaved repetitions in one run.

The rows are the same for every candidate: one per order (id, user, amount), appended to
a fresh table without indexes. The clock runs from the candidate's start until the table
holds every row, as another session sees it: for eos that is after the last checkpoint's
COMMIT PREPARED. Another session counts the rows every 0.1 s, which also gives the
sustained rate: rows per second between the moments the table held 10% and 90% of them
(what a long-running job sees, without the start, the group join and the wait for the
last checkpoint). The server is a local PostgreSQL with its durable defaults (fsync on),
or the one POSTGRES_DSN names. 3,000,000 rows by default: at 1,000,000 the plain loop
takes under two seconds, and one checkpoint interval (1 s) before the last rows commit
would be half of it.

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
RECORDS = 3_000_000
REPS = 5
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


def run_once(name: str, bootstrap: str, topic: str, dsn: str, records: int, log
             ) -> tuple[float, float, list[tuple[float, int]]]:
    """Seconds from start until the table holds `records` rows, the sustained rate, and
    the row counts seen over time."""
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
            seen: list[tuple[float, int]] = []
            while (rows := conn.execute(count).fetchone()[0]) < records:
                seen.append((time.monotonic() - start, rows))
                if proc.poll() is not None and proc.returncode != 0:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            elapsed = time.monotonic() - start
            seen.append((elapsed, records))
            rows = conn.execute(count).fetchone()[0]
            if rows != records:
                raise RuntimeError(f"{name} wrote {rows} rows, not {records}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
            proc.wait()
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    sustained = _sustained(seen, records)
    log(f"  {name}: {records / elapsed:,.0f} rows/s ({elapsed:.1f}s), sustained {sustained:,.0f} rows/s")
    return elapsed, sustained, seen


def _sustained(seen: list[tuple[float, int]], records: int) -> float:
    """Rows per second between the first sight of 10% and of 90% of the rows."""
    low = next((t, n) for t, n in seen if n >= records // 10)
    high = next((t, n) for t, n in seen if n >= records * 9 // 10)
    return (high[1] - low[1]) / (high[0] - low[0]) if high[0] > low[0] else float("nan")


def postgres_throughput(bootstrap: str, records: int, users: int, reps: int, log) -> dict:
    topic = workload.ensure_input(bootstrap, records, users, log=log)
    with server_dsn() as admin:
        dsn = create_database(admin, "bench")
        runs: dict[str, list[float]] = {name: [] for name in CANDIDATES}
        sustained: dict[str, list[float]] = {name: [] for name in CANDIDATES}
        series: dict[str, list[tuple[float, int]]] = {}  # of the last repetition
        for rep in range(reps):
            for name in CANDIDATES:
                elapsed, rate, seen = run_once(name, bootstrap, topic, dsn, records, log)
                runs[name].append(records / elapsed)
                sustained[name].append(rate)
                series[name] = [(round(t, 2), n) for t, n in seen]
    medians = {name: statistics.median(v) for name, v in runs.items()}
    sustained_medians = {name: statistics.median(v) for name, v in sustained.items()}
    return {"rows_over_time_last_rep": series, "sustained_rows_per_s": sustained,
            "median_sustained_rows_per_s": sustained_medians, "sustained_vs_plain": _ratios(sustained),"date": time.strftime("%Y-%m-%d %H:%M"), "server": "PostgreSQL 15, local, fsync on" if
            not os.environ.get("POSTGRES_DSN") else "POSTGRES_DSN",
            "records": records, "users": users, "reps": reps, "rows_per_s": runs, "median_rows_per_s": medians,
            "vs_plain": _ratios(runs)}


def _ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """Per candidate, the median over repetitions of its rate over the plain loop's in the
    same repetition: the runs of one repetition follow each other, so a machine shared
    with other work slows them alike more often than it slows runs minutes apart."""
    plain = rates["plain-psycopg-copy"]
    return {name: statistics.median(r / p for r, p in zip(values, plain)) for name, values in rates.items()}


def plot(result: dict, path: Path) -> None:
    """Rows in the table over time, last repetition: the plain loop's commits every
    second against eos's checkpoints (each a step: its rows appear at COMMIT PREPARED)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, points in result["rows_over_time_last_rep"].items():
        ax.step([t for t, _ in points], [n / 1e6 for _, n in points], where="post", label=name)
    ax.set_xlabel("s since start"), ax.set_ylabel("million rows visible in the table"), ax.legend()
    ax.set_title(f"{result['records']:,} rows into PostgreSQL (last repetition)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict) -> str:
    lines = [f"| into PostgreSQL ({result['records']:,} rows, 4 partitions) | rows/s, start to last row (median) "
             "| vs plain loop | rows/s sustained (median) | vs plain loop |",
             "|---|---:|---:|---:|---:|"]
    for name in CANDIDATES:
        lines.append(f"| {name} | {result['median_rows_per_s'][name]:,.0f} | {result['vs_plain'][name]:.2f}x | "
                     f"{result['median_sustained_rows_per_s'][name]:,.0f} | "
                     f"{result['sustained_vs_plain'][name]:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), required=False)
    ap.add_argument("--records", type=int, default=RECORDS)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=REPS)
    args = ap.parse_args()
    result = postgres_throughput(args.bootstrap, args.records, args.users, args.reps, print)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
