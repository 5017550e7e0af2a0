"""Benchmark harness: same broker, same workload, candidates interleaved.

For every (records, users) configuration the input topic is produced once (and reused
across invocations when complete). Then, for each repetition and each candidate in turn
(A, B, A, B, ...): fresh output topic + consumer group, the candidate starts as a
subprocess, and the clock runs from process start until the N-th output record is
committed: a ``read_committed`` consumer counts the output, and the commit moment is taken
from the partitions' last stable offsets sampled every 20 ms (see workload.OutputWatcher). The candidate's CPU time (psutil, at that moment) and
records/s are recorded, the process group is killed, topics of the run are deleted.

    .venv/bin/python bench/runner.py --bootstrap localhost:39192 \
        --records 1000000 --users 10000 --reps 3 [--only plain-confluent-eos] [--verify]

Adding a candidate (in this file, or in a file passed with ``--plugin``)::

    register("eos-exactly-once", lambda ctx: [PY, "-m", "service.cli", "run", ...,
             "--input", ctx.input_topic, "--output", ctx.output_topic, "--group", ctx.group])

``ctx`` is a :class:`RunContext`; the command must keep running (the harness kills it) and
must commit its output transactionally with ``ctx.commit_interval``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import runpy
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import workload  # noqa: E402

# Every candidate runs on the interpreter that runs the benchmark. Under `make bench`
# that is .venv-bench, where Quix Streams is installed (the `bench` extra) and pins the
# client library for all; run by hand elsewhere, Quix gets an environment of its own.
MAIN_PY = sys.executable
QUIX_VENV = REPO / ".venv-bench-quix"
try:
    import quixstreams  # noqa: F401
    QUIX_PY = sys.executable
except ImportError:
    QUIX_PY = str(QUIX_VENV / "bin" / "python")
QUIX_REQUIREMENTS = BENCH_DIR / "requirements-quix.txt"


# --------------------------------------------------------------------------- registry


@dataclass
class RunContext:
    """Everything a command builder may need for one run."""

    bootstrap: str
    input_topic: str
    output_topic: str
    group: str  # unique per run; also used as a prefix for any auxiliary names
    records: int
    users: int
    rep: int
    commit_interval: float
    workdir: Path  # fresh, private, removed after the run (state dirs go here)
    repo: Path = REPO
    bench_dir: Path = BENCH_DIR


@dataclass
class Candidate:
    name: str
    build: Callable[[RunContext], list[str]]
    prepare: Callable[[], None] | None = None  # run once before any timing (e.g. create a venv)
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


REGISTRY: dict[str, Candidate] = {}


def register(name: str, build: Callable[[RunContext], list[str]], *, prepare: Callable[[], None] | None = None, env: dict[str, str] | None = None, description: str = "") -> Candidate:
    """Register a candidate: ``build(ctx)`` returns the argv that runs it."""
    cand = Candidate(name, build, prepare, dict(env or {}), description)
    REGISTRY[name] = cand
    return cand


def ensure_quix_venv(log=print) -> str:
    """Create .venv-bench-quix from requirements-quix.txt unless it is up to date (or
    Quix Streams is already importable here)."""
    if QUIX_PY == sys.executable:
        return QUIX_PY
    want = hashlib.sha256(QUIX_REQUIREMENTS.read_bytes()).hexdigest()
    marker = QUIX_VENV / ".bench-requirements.sha256"
    if Path(QUIX_PY).exists() and marker.exists() and marker.read_text().strip() == want:
        return QUIX_PY
    log(f"creating {QUIX_VENV} from {QUIX_REQUIREMENTS.name} ...")
    if not Path(QUIX_PY).exists():
        subprocess.run(["python3", "-m", "venv", str(QUIX_VENV)], check=True)
    subprocess.run([QUIX_PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(QUIX_REQUIREMENTS)], check=True)
    marker.write_text(want)
    return QUIX_PY


def _common_args(ctx: RunContext) -> list[str]:
    return ["--bootstrap", ctx.bootstrap, "--input", ctx.input_topic, "--output", ctx.output_topic, "--group", ctx.group, "--commit-interval", str(ctx.commit_interval)]


register(
    "plain-confluent-eos",
    lambda ctx: [MAIN_PY, str(BENCH_DIR / "plain_loop.py"), *_common_args(ctx)],
    description="hand-written confluent-kafka transactional loop, dict state (ceiling)",
)
register(
    "quix-eos-rocksdb",
    lambda ctx: [QUIX_PY, str(BENCH_DIR / "quix_running_sum.py"), *_common_args(ctx), "--state-dir", str(ctx.workdir / "quix-state")],
    prepare=ensure_quix_venv,
    description="Quix Streams 3.28.1, exactly-once, RocksDB state + changelog",
)


def _eos_args(ctx: RunContext, job: Path, guarantee: str) -> list[str]:
    return [MAIN_PY, "-m", "service.cli", "--log-level", "WARNING", "run", str(job),
            "--bootstrap-servers", ctx.bootstrap, "--group", ctx.group,
            "--state-dir", str(ctx.workdir / "eos-state"),
            "--checkpoint-storage", f"file://{ctx.workdir / 'eos-checkpoints'}",
            "--checkpoint-interval", f"{ctx.commit_interval}s", "--worker-id", "bench",
            "--processing-guarantee", guarantee,
            "-p", f"input={ctx.input_topic}", "-p", f"output={ctx.output_topic}"]


register(
    "eos-exactly-once",
    lambda ctx: _eos_args(ctx, REPO / "examples" / "running_sum.py", "exactly-once"),
    description="eos running_sum (key_by -> repartition topic), exactly-once, RocksDB state",
)
register(
    "eos-at-least-once",
    lambda ctx: _eos_args(ctx, REPO / "examples" / "running_sum.py", "at-least-once"),
    description="eos running_sum (key_by -> repartition topic), at-least-once",
)
# How often eos's changelog mode snapshots the state in the benchmarks that run it.
CHANGELOG_SNAPSHOT_INTERVAL = "30s"

register(
    "eos-exactly-once-prekeyed-changelog",
    lambda ctx: [*_eos_args(ctx, REPO / "examples" / "running_sum_prekeyed.py", "exactly-once"),
                 "--snapshot-interval", CHANGELOG_SNAPSHOT_INTERVAL],
    description="the prekeyed running sum with a changelog: state changes logged in each checkpoint's "
                f"transaction, a snapshot every {CHANGELOG_SNAPSHOT_INTERVAL}",
)
register(
    "eos-exactly-once-prekeyed",
    lambda ctx: _eos_args(ctx, REPO / "examples" / "running_sum_prekeyed.py", "exactly-once"),
    description="eos running sum keyed by the record key (input keyed by user): no repartition",
)


# --------------------------------------------------------------------------- one run


def _cpu(proc: psutil.Process) -> dict:
    """CPU seconds of the process and its live descendants."""
    user = system = 0.0
    procs = [proc]
    try:
        procs += proc.children(recursive=True)
    except psutil.Error:
        pass
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        user += t.user
        system += t.system
    return {"user": user, "system": system, "total": user + system}


def _proc_cpu_total(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return None


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def find_broker_pid(bootstrap: str) -> int | None:
    """The pid listening on the bootstrap port (for broker CPU accounting), if visible."""
    try:
        port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except (psutil.Error, ValueError, IndexError, PermissionError):
        pass
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the candidate's process group (it was started in a session of its own)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_once(cand: Candidate, *, bootstrap: str, input_topic: str, records: int, users: int, rep: int, commit_interval: float, timeout: float, verify: bool, keep_topics: bool, logdir: Path, broker_pid: int | None, log=print) -> dict:
    run_id = uuid.uuid4().hex[:8]
    group = f"bench-{cand.name}-{run_id}"
    output_topic = f"bench-out-{cand.name}-{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{cand.name}-"))
    ctx = RunContext(bootstrap, input_topic, output_topic, group, records, users, rep, commit_interval, workdir)
    argv = cand.build(ctx)
    logfile = logdir / f"{cand.name}-rep{rep}-{run_id}.log"
    result: dict = {"candidate": cand.name, "rep": rep, "group": group, "output_topic": output_topic, "argv": argv, "log": str(logfile)}

    workload.create_topic(bootstrap, output_topic)
    watcher = workload.OutputWatcher(bootstrap, output_topic)  # assigned (and fetching) before the start
    proc = None
    try:
        env = {**os.environ, **cand.env}
        broker_cpu0 = _proc_cpu_total(broker_pid)
        self_cpu0 = _self_cpu()
        with open(logfile, "wb") as logf:
            t_start = time.monotonic()
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(REPO))
        ps = psutil.Process(proc.pid)
        last_cpu = {"user": 0.0, "system": 0.0, "total": 0.0}
        exited_at: list[float] = []

        def alive() -> bool:
            nonlocal last_cpu
            if proc.poll() is None:
                last_cpu = _cpu(ps)
                return True
            # Exited on its own: allow a short grace period for already-committed data to arrive.
            if not exited_at:
                exited_at.append(time.monotonic())
            return time.monotonic() - exited_at[0] < 5.0

        try:
            t_done = watcher.wait(records, timeout, alive=alive, poll=0.05)
        except (TimeoutError, RuntimeError) as exc:
            result.update(ok=False, error=str(exc), seen=watcher.count)
            log(f"  {cand.name} rep {rep}: FAILED: {exc}; log tail:\n{_tail(logfile)}")
            return result
        cpu = _cpu(ps) if proc.poll() is None else last_cpu
        broker_cpu1 = _proc_cpu_total(broker_pid)
        self_cpu1 = _self_cpu()
        _kill_group(proc)

        elapsed = t_done - t_start
        first = (watcher.first_seen - t_start) if watcher.first_seen is not None else None
        result.update(
            ok=True,
            elapsed_s=elapsed,
            records_per_s=records / elapsed,
            first_output_s=first,
            # How long after the broker exposed the N-th output as committed the watcher had counted it.
            count_lag_s=watcher.counted_at - t_done,
            cpu_s=cpu["total"],
            cpu_user_s=cpu["user"],
            cpu_system_s=cpu["system"],
            cpu_us_per_record=cpu["total"] / records * 1e6,
            broker_cpu_s=(broker_cpu1 - broker_cpu0) if broker_cpu0 is not None and broker_cpu1 is not None else None,
            watcher_cpu_s=self_cpu1 - self_cpu0,
        )
        if verify:
            v = workload.verify_output(bootstrap, input_topic, output_topic)
            result["verify"] = v.as_dict()
            if not v.ok:
                result["ok"] = False
                log(f"  {cand.name} rep {rep}: VERIFY FAILED: {v.problems[:5]}")
        return result
    finally:
        if proc is not None:
            _kill_group(proc)
        watcher.close()
        if not keep_topics:
            try:
                doomed = [t for t in workload.list_topics(bootstrap) if t == output_topic or group in t]
                workload.delete_topics(bootstrap, doomed)
            except Exception as exc:  # cleanup must not hide the result
                log(f"  cleanup of {output_topic}: {exc}")
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- summary


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    out: dict = {"runs": len(runs), "ok_runs": len(ok)}
    if not ok:
        return out

    def stats(key: str) -> dict | None:
        vals = [r[key] for r in ok if r.get(key) is not None]
        if not vals:
            return None
        med = statistics.median(vals)
        return {"median": med, "min": min(vals), "max": max(vals), "spread_pct": (max(vals) - min(vals)) / med * 100 if med else None, "values": vals}

    for key in ("records_per_s", "elapsed_s", "first_output_s", "count_lag_s", "cpu_s", "cpu_us_per_record", "broker_cpu_s", "watcher_cpu_s"):
        s = stats(key)
        if s is not None:
            out[key] = s
    return out


def format_table(results: dict) -> str:
    lines = []
    for cfg in results["configs"]:
        lines.append(f"records={cfg['records']:,} users={cfg['users']:,}  (input {cfg['input_topic']})")
        lines.append(f"  {'candidate':<24} {'rec/s median':>13} {'min..max':>21} {'spread':>7} {'elapsed':>8} {'1st out':>8} {'CPU s':>7} {'us/rec':>7} {'broker CPU':>10}")
        for name, c in cfg["candidates"].items():
            s = c["summary"]
            if not s.get("ok_runs"):
                lines.append(f"  {name:<24} no successful runs")
                continue
            r, e, cpu = s["records_per_s"], s["elapsed_s"], s["cpu_s"]
            first = s.get("first_output_s", {}).get("median")
            bcpu = s.get("broker_cpu_s", {}).get("median")
            lines.append(
                f"  {name:<24} {r['median']:>13,.0f} {r['min']:>10,.0f}..{r['max']:<10,.0f} {r['spread_pct']:>6.1f}% {e['median']:>7.2f}s "
                f"{(first if first is not None else float('nan')):>7.2f}s {cpu['median']:>7.2f} {s['cpu_us_per_record']['median']:>7.2f} "
                f"{(bcpu if bcpu is not None else float('nan')):>9.2f}s  ({s['ok_runs']}/{s['runs']} ok)"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def run_benchmark(*, bootstrap: str, records_list: list[int], users_list: list[int], reps: int, only: list[str] | None, commit_interval: float = 1.0, timeout: float = 900.0, verify: bool = False, keep_topics: bool = False, pause: float = 2.0, seed: int = workload.DEFAULT_SEED, broker_pid: int | None = None, log=print) -> dict:
    names = list(REGISTRY) if not only else only
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown candidate(s) {unknown}; known: {list(REGISTRY)}")
    for n in names:
        if REGISTRY[n].prepare:
            REGISTRY[n].prepare()
    broker_pid = broker_pid or find_broker_pid(bootstrap)
    logdir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    results: dict = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "bootstrap": bootstrap,
            "broker_pid": broker_pid,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "reps": reps,
            "commit_interval_s": commit_interval,
            "candidates": {n: REGISTRY[n].description for n in names},
            "logdir": str(logdir),
        },
        "configs": [],
    }
    for records in records_list:
        for users in users_list:
            t0 = time.monotonic()
            input_topic = workload.ensure_input(bootstrap, records, users, seed, log=log)
            cfg = {"records": records, "users": users, "seed": seed, "input_topic": input_topic, "input_ready_s": time.monotonic() - t0, "candidates": {n: {"runs": []} for n in names}}
            results["configs"].append(cfg)
            for rep in range(reps):
                for n in names:  # interleaved: A, B, A, B, ...
                    time.sleep(pause)
                    r = run_once(REGISTRY[n], bootstrap=bootstrap, input_topic=input_topic, records=records, users=users, rep=rep, commit_interval=commit_interval, timeout=timeout, verify=verify, keep_topics=keep_topics, logdir=logdir, broker_pid=broker_pid, log=log)
                    cfg["candidates"][n]["runs"].append(r)
                    if r.get("ok"):
                        log(f"  {n} rep {rep}: {r['records_per_s']:,.0f} rec/s, {r['elapsed_s']:.2f}s, first output {r['first_output_s']:.2f}s, CPU {r['cpu_s']:.2f}s" + (", verify ok" if r.get("verify", {}).get("ok") else ""))
            for n in names:
                cfg["candidates"][n]["summary"] = summarize(cfg["candidates"][n]["runs"])
    results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def _ints(s: str) -> list[int]:
    return [int(x.replace("_", "")) for x in s.split(",") if x]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default="localhost:39192")
    ap.add_argument("--records", type=_ints, default=[1_000_000], help="comma list, e.g. 1000000 or 20000,1000000")
    ap.add_argument("--users", type=_ints, default=[10_000], help="comma list, e.g. 10000,100000,1000000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma list of candidate names")
    ap.add_argument("--commit-interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds of idle before each run")
    ap.add_argument("--seed", type=int, default=workload.DEFAULT_SEED)
    ap.add_argument("--verify", action="store_true", help="check every run's committed output (untimed)")
    ap.add_argument("--keep-topics", action="store_true", help="do not delete output/changelog topics after a run")
    ap.add_argument("--broker-pid", type=int, default=None, help="for broker CPU accounting (default: found via the port)")
    ap.add_argument("--plugin", action="append", default=[], help="python file executed first; may call register(...)")
    ap.add_argument("--out", default=None, help="write the JSON results here (default bench/results/<time>.json)")
    ap.add_argument("--list", action="store_true", help="list candidates and exit")
    args = ap.parse_args(argv)

    for p in args.plugin:
        runpy.run_path(p, init_globals={"register": register, "RunContext": RunContext, "MAIN_PY": MAIN_PY, "REPO": REPO, "BENCH_DIR": BENCH_DIR})
    if args.list:
        for c in REGISTRY.values():
            print(f"{c.name:<24} {c.description}")
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = run_benchmark(
        bootstrap=args.bootstrap,
        records_list=args.records,
        users_list=args.users,
        reps=args.reps,
        only=args.only.split(",") if args.only else None,
        commit_interval=args.commit_interval,
        timeout=args.timeout,
        verify=args.verify,
        keep_topics=args.keep_topics,
        pause=args.pause,
        seed=args.seed,
        broker_pid=args.broker_pid,
        log=log,
    )
    out = Path(args.out) if args.out else BENCH_DIR / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"results: {out}")
    return 0 if all(c["summary"].get("ok_runs") == c["summary"].get("runs") for cfg in results["configs"] for c in cfg["candidates"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
