"""`make bench`: the whole benchmark suite on one broker, in one run.

Every figure is reported against a baseline measured in the same run on the same broker:
throughput as a ratio to the plain confluent-kafka transactional loop (the practical
ceiling for a Python process) and to Quix Streams, and with large state also to a bound
(bench/state_bound.py: the same job with RocksDB doing nothing); the dead-letter path as a ratio of
1% poison to clean input; monitoring as a ratio of scraped to unscraped; rows into
PostgreSQL as a ratio to a plain psycopg COPY loop on the same server; failover (a
worker SIGKILLed and restarted at once, as a supervisor does, until its tasks produce
output again) with static membership against the default dynamic one; scaling as 1, 2
and 4 workers, each held to the same CPU share (a cgroup per worker), against 1. Results
go to docs/bench/results.json, plots to docs/bench/*.png, and the headline table into
README.md.

    .venv-bench/bin/python bench/suite.py                 # everything (~45 min on 2 cores)
    .venv-bench/bin/python bench/suite.py --quick         # small sizes, a smoke run
    .venv-bench/bin/python bench/suite.py --only scaling  # one section (--cpu-per-worker: its share)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import psutil
from confluent_kafka import Producer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import postgres_bench  # noqa: E402
import runner  # noqa: E402
import scale_out  # noqa: E402
import scaling_bench  # noqa: E402
import async_snapshot_bench  # noqa: E402
import join_bench  # noqa: E402 (registers the join candidates)
import latency_bench  # noqa: E402
import state_bound  # noqa: E402
import window_bench  # noqa: E402 (registers the window candidates)
import workload  # noqa: E402
from runner import MAIN_PY, REGISTRY, register, run_benchmark, run_once  # noqa: E402

from service.local_kafka import BrokerSettings, LocalBroker  # noqa: E402

DOCS = REPO / "docs" / "bench"
HEADLINE = ["plain-confluent-eos", "quix-eos-rocksdb", "eos-exactly-once", "eos-exactly-once-prekeyed",
            "eos-at-least-once"]


def _eos_dlq(ctx: runner.RunContext) -> list[str]:
    return [*REGISTRY["eos-exactly-once"].build(ctx), "--error-policy", "dead-letter"]


register("eos-exactly-once-dlq", _eos_dlq,
         description="eos running_sum, exactly-once, error policy dead-letter")
state_bound.register_candidate()
runpy.run_path(str(BENCH_DIR / "metrics_overhead.py"),
               init_globals={"register": register, "RunContext": runner.RunContext, "MAIN_PY": MAIN_PY,
                             "REPO": REPO, "BENCH_DIR": BENCH_DIR})


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rate(cfg: dict, name: str) -> float | None:
    summary = cfg["candidates"].get(name, {}).get("summary", {})
    return summary.get("records_per_s", {}).get("median")


def throughput(bootstrap: str, records: int, users: list[int], reps: list[int], log) -> list[dict]:
    """The headline: every candidate on the same input, interleaved, ratios to the plain loop."""
    configs = []
    for user_count, rep_count in zip(users, reps):
        result = run_benchmark(bootstrap=bootstrap, records_list=[records], users_list=[user_count],
                               reps=rep_count, only=HEADLINE, log=log)
        cfg = result["configs"][0]
        plain, quix = _rate(cfg, "plain-confluent-eos"), _rate(cfg, "quix-eos-rocksdb")
        cfg["ratios"] = {
            name: {"vs_plain": (_rate(cfg, name) or 0) / plain if plain else None,
                   "vs_quix": (_rate(cfg, name) or 0) / quix if quix else None}
            for name in HEADLINE}
        configs.append(cfg)
    return configs


def monitoring_cost(bootstrap: str, records: int, users: int, reps: int, log) -> dict:
    result = run_benchmark(bootstrap=bootstrap, records_list=[records], users_list=[users], reps=reps,
                           only=["eos-exactly-once-prekeyed", "eos-exactly-once-prekeyed-monitored"], log=log)
    cfg = result["configs"][0]
    off, on = _rate(cfg, "eos-exactly-once-prekeyed"), _rate(cfg, "eos-exactly-once-prekeyed-monitored")
    cpu = {n: cfg["candidates"][n]["summary"].get("cpu_us_per_record", {}).get("median")
           for n in ("eos-exactly-once-prekeyed", "eos-exactly-once-prekeyed-monitored")}
    return {"records": records, "users": users, "reps": reps, "off_rec_s": off, "on_rec_s": on,
            "ratio_on_off": on / off if off and on else None, "cpu_us_per_record": cpu, "raw": cfg}


def _produce_poisoned(bootstrap: str, records: int, users: int, every: int) -> tuple[str, int]:
    """The standard input with every `every`-th record replaced by one that is not JSON."""
    topic = f"bench-in-poison{every}-r{records}-u{users}-{uuid.uuid4().hex[:6]}"
    workload.create_topic(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000, "partitioner": "murmur2_random"})
    good = 0
    for i, (key, value) in enumerate(workload.generate(records, users)):
        if i % every == every - 1:
            value = b"{not json %d" % i
        else:
            good += 1
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return topic, good


def dead_letter_cost(bootstrap: str, records: int, users: int, reps: int, log) -> dict:
    """The dead-letter path must not slow the clean path: 0% vs 1% poison."""
    clean_topic = workload.ensure_input(bootstrap, records, users, log=log)
    poisoned_topic, good = _produce_poisoned(bootstrap, records, users, every=100)
    cand = REGISTRY["eos-exactly-once-dlq"]
    logdir = Path(tempfile.mkdtemp(prefix="bench-dlq-"))
    runs: dict[str, list[dict]] = {"clean": [], "poison_1pct": []}
    for rep in range(reps):
        for label, topic, expected in (("clean", clean_topic, records), ("poison_1pct", poisoned_topic, good)):
            r = run_once(cand, bootstrap=bootstrap, input_topic=topic, records=expected, users=users, rep=rep,
                         commit_interval=1.0, timeout=900, verify=False, keep_topics=False, logdir=logdir,
                         broker_pid=None, log=log)
            if r.get("ok"):
                # Throughput over every input record, poison included.
                r["input_records_per_s"] = records / r["elapsed_s"]
                log(f"  dead-letter {label} rep {rep}: {r['input_records_per_s']:,.0f} input rec/s")
            runs[label].append(r)
    clean = _median([r["input_records_per_s"] for r in runs["clean"] if r.get("ok")])
    poison = _median([r["input_records_per_s"] for r in runs["poison_1pct"] if r.get("ok")])
    return {"records": records, "users": users, "reps": reps, "clean_rec_s": clean, "poison_1pct_rec_s": poison,
            "ratio_poison_clean": poison / clean if clean and poison else None,
            "runs": {k: [{x: r.get(x) for x in ("ok", "elapsed_s", "input_records_per_s", "cpu_s")} for r in v]
                     for k, v in runs.items()}}


def checkpoint_vs_state(sizes: list[int], log) -> list[dict]:
    """Checkpoint duration p50/p99 (100% of keys state, 1% changed) and recovery time,
    per state size, from the state store's own checkpoint benchmark on file storage."""
    rows = []
    for keys in sizes:
        out = Path(tempfile.mkdtemp(prefix="bench-chk-")) / "c.json"
        cmd = [sys.executable, str(BENCH_DIR / "checkpoint_bench.py"), "--storages", "file", "--keys", str(keys),
               "--recovery-keys", str(keys), "--checkpoints", "40", "--out", str(out), "--plot", str(out.with_suffix(".png"))]
        log(f"checkpoint benchmark with {keys:,} keys")
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
        incremental = next(c for c in data["checkpoints"] if c["mode"] == "incremental")
        recovery = data["recovery"][0]
        rows.append({"keys": keys, "checkpoint_p50_ms": incremental["duration_p50_ms"],
                     "checkpoint_p99_ms": incremental["duration_p99_ms"],
                     "uploaded_p50_bytes": incremental["uploaded_p50_bytes"],
                     "state_bytes": recovery["state_bytes"],
                     "recovery_new_machine_s": recovery["new_machine_s"],
                     "recovery_same_machine_s": recovery["same_machine_s"]})
        log(f"  {keys:,} keys: checkpoint p50 {rows[-1]['checkpoint_p50_ms']:.1f} ms, "
            f"p99 {rows[-1]['checkpoint_p99_ms']:.1f} ms, recovery {rows[-1]['recovery_new_machine_s']:.2f} s")
    return rows


def _produce_unique_keys(bootstrap: str, topic: str, records: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 2_000_000, "partitioner": "murmur2_random"})
    dumps = orjson.dumps
    for i in range(records):
        user = f"k{i}"
        while True:
            try:
                producer.produce(topic, dumps({"id": i, "user": user, "amount": 1}), user.encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(300)


# The 10,000,000-key run: eos (whose RSS has a target) against the same baselines as the
# throughput section, each on the same input of unique keys.
RSS_CANDIDATES = ("eos-exactly-once-prekeyed", "plain-confluent-eos", "quix-eos-rocksdb")


def rss_with_many_keys(bootstrap: str, keys: int, log) -> dict:
    """Resident memory and throughput while state grows to `keys` keys (every record a new
    key), for eos and the baselines on the same input. eos's write-back cache is bounded,
    so its state spills to RocksDB instead of growing the process; the plain loop keeps
    every key in a dict."""
    topic = f"bench-in-unique-{keys}-{uuid.uuid4().hex[:6]}"
    workload.create_topic(bootstrap, topic)
    began = time.monotonic()
    _produce_unique_keys(bootstrap, topic, keys)
    log(f"produced {keys:,} unique keys in {time.monotonic() - began:.0f}s")
    runner.ensure_quix_venv(log)
    runs = {name: _sampled_run(bootstrap, REGISTRY[name], topic, keys, log) for name in RSS_CANDIDATES}
    workload.delete_topics(bootstrap, [topic])
    plain, quix = (runs[name] for name in RSS_CANDIDATES[1:])
    for run in runs.values():
        if run.get("ok") and plain.get("ok") and quix.get("ok"):
            run["vs_plain"] = run["records_per_s"] / plain["records_per_s"]
            run["vs_quix"] = run["records_per_s"] / quix["records_per_s"]
    return {"keys": keys, "candidates": runs}


def _sampled_run(bootstrap: str, cand: runner.Candidate, topic: str, keys: int, log) -> dict:
    """One run of a candidate over the `keys` unique keys, its RSS sampled every 0.5 s."""
    output = f"bench-out-unique-{uuid.uuid4().hex[:6]}"
    workload.create_topic(bootstrap, output)
    workdir = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    ctx = runner.RunContext(bootstrap, topic, output, f"bench-rss-{uuid.uuid4().hex[:6]}", keys, keys, 0, 1.0, workdir)
    watcher = workload.OutputWatcher(bootstrap, output)
    samples: list[tuple[float, int]] = []
    with open(workdir / "worker.log", "wb") as logf:
        start = time.monotonic()
        proc = subprocess.Popen(cand.build(ctx), stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **cand.env}, start_new_session=True)
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append((time.monotonic() - start, ps.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = watcher.wait(keys, 3600, alive=lambda: proc.poll() is None)
        cpu = ps.cpu_times()
    except (TimeoutError, RuntimeError) as exc:
        log(f"  {cand.name}, {keys:,} keys: FAILED: {exc} (log: {workdir / 'worker.log'})")
        return {"candidate": cand.name, "ok": False, "error": str(exc)}
    finally:
        stop.set()
        runner._kill_group(proc)
        watcher.close()
        workload.delete_topics(bootstrap, [output])
    peak = max(rss for _, rss in samples)
    log(f"  {cand.name}, {keys:,} keys: peak RSS {peak / 2**20:.0f} MiB, {keys / (done - start):,.0f} rec/s")
    return {"candidate": cand.name, "ok": True, "peak_rss_mib": peak / 2**20, "elapsed_s": done - start,
            "records_per_s": keys / (done - start), "cpu_s": cpu.user + cpu.system,
            "samples": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in samples]}


def plots(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["throughput"][0]
    names = [n for n in HEADLINE if _rate(cfg, n)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, [_rate(cfg, n) / 1000 for n in names], color="#4878a8")
    for i, n in enumerate(names):
        ax.text(_rate(cfg, n) / 1000, i, f" {cfg['ratios'][n]['vs_plain']:.2f}x plain", va="center")
    ax.set_xlabel("thousand records / s (median)")
    ax.set_title(f"Running sum, {cfg['records']:,} records, {cfg['users']:,} users, exactly-once unless noted")
    fig.tight_layout()
    fig.savefig(DOCS / "throughput.png", dpi=110)

    rows = results["checkpoint_vs_state"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    keys = [r["keys"] for r in rows]
    left.plot(keys, [r["checkpoint_p50_ms"] for r in rows], "o-", label="p50")
    left.plot(keys, [r["checkpoint_p99_ms"] for r in rows], "o-", label="p99")
    left.set_xscale("log"), left.set_xlabel("keys in state"), left.set_ylabel("ms"), left.legend()
    left.set_title("checkpoint duration (1% of keys changed)")
    right.plot(keys, [r["recovery_new_machine_s"] for r in rows], "o-", label="new machine")
    right.plot(keys, [r["recovery_same_machine_s"] for r in rows], "o-", label="same machine")
    right.set_xscale("log"), right.set_xlabel("keys in state"), right.set_ylabel("s"), right.legend()
    right.set_title("recovery")
    fig.tight_layout()
    fig.savefig(DOCS / "state-size.png", dpi=110)

    rss = results["rss"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, run in rss["candidates"].items():
        if run.get("samples"):
            ax.plot([t for t, _ in run["samples"]], [m for _, m in run["samples"]], label=name)
    ax.axhline(500e6 / 2**20, color="red", linestyle="--", label="500 MB target (eos)")
    ax.set_xlabel("s"), ax.set_ylabel("RSS MiB"), ax.legend()
    ax.set_title(f"RSS while state grows to {rss['keys']:,} keys")
    fig.tight_layout()
    fig.savefig(DOCS / "rss.png", dpi=110)


def headline_table(results: dict) -> str:
    lines = ["| job (1M records, 4 partitions) | users | records/s (median) | vs plain loop | vs Quix | CPU µs/record |",
             "|---|---:|---:|---:|---:|---:|"]
    for cfg in results["throughput"]:
        for name in HEADLINE:
            summary = cfg["candidates"][name].get("summary", {})
            rate = _rate(cfg, name)
            if not rate:
                continue
            cpu = summary.get("cpu_us_per_record", {}).get("median")
            ratio = cfg["ratios"][name]
            lines.append(f"| {name} | {cfg['users']:,} | {rate:,.0f} | {ratio['vs_plain']:.2f}x | "
                         f"{ratio['vs_quix']:.1f}x | {cpu:.1f} |")
    return "\n".join(lines)


def window_table(results: dict) -> str:
    """The window benchmark's rows for the README: eos and Quix Streams on the same input."""
    windows = results["windows"]
    lines = [f"| window job ({windows['records'] // 1_000_000}M records, {windows['users']:,} users, "
             f"{windows['window_ms'] // 1000} s tumbling count, final results) | records/s (median) | vs Quix |",
             "|---|---:|---:|"]
    for name, median in (("eos-window-count", windows["eos_median"]), ("quix-window-count", windows["quix_median"])):
        ratio = median / windows["quix_median"] if median and windows["quix_median"] else None
        lines.append(f"| {name} | {median:,.0f} | {ratio:.1f}x |" if ratio else f"| {name} | - | - |")
    return "\n".join(lines)


def join_table(results: dict) -> str:
    joins = results["joins"]
    lines = [f"| enrichment join ({joins['records']:,} orders, {joins['users']:,} users) "
             "| orders/s (median) | vs plain loop | vs Quix |", "|---|---:|---:|---:|"]
    medians = joins["medians"]
    for name in ("plain-enrichment", "quix-enrichment", "eos-enrichment"):
        rate = medians.get(name)
        if rate:
            lines.append(f"| {name} | {rate:,.0f} | {rate / medians['plain-enrichment']:.2f}x | "
                         f"{rate / medians['quix-enrichment']:.1f}x |")
    return "\n".join(lines)


def latency_table(results: dict) -> str:
    latency = results["latency"]
    lines = [f"| end-to-end latency at {latency['rate']:,.0f} orders/s (half the maximum) | checkpoint interval "
             "| p50 ms | p99 ms | max ms | p99 processing / commit ms |", "|---|---:|---:|---:|---:|---:|"]
    for run in latency["runs"]:
        if run.get("ok"):
            remote = (f" (checkpoints to S3, 20 ms a request; {run['rate']:,.0f} orders/s)"
                      if run.get("storage") == "s3-remote" else "")
            split = (f"{run['processing_p99_ms']:.0f} / {run['commit_p99_ms']:.0f}"
                     if "processing_p99_ms" in run else "-")
            lines.append(f"| {run['candidate']}{remote} | {run['interval_s'] * 1000:.0f} ms | {run['p50_ms']:.0f} | "
                         f"{run['p99_ms']:.0f} | {run['max_ms']:.0f} | {split} |")
    ratios = latency.get("throughput_100ms_vs_1s")
    if isinstance(ratios, dict):  # each eos mode at 100 ms against the default at 1 s
        said = [f"{mode} {ratio:.2f}x" for mode, ratio in ratios.items() if ratio]
        if said:
            lines.append("\neos's maximum throughput with checkpoints every 100 ms, against the default mode at "
                         f"1 s: {', '.join(said)}.")
    elif ratios:
        lines.append(f"\neos's maximum throughput with checkpoints every 100 ms: {ratios:.2f}x that at 1 s.")
    return "\n".join(lines)


def async_table(results: dict) -> str:
    a = results["async_snapshots"]
    lines = [f"| asynchronous snapshots ({a['keys']:,} keys, 1% changed per checkpoint) | orders/s | "
             "pause per checkpoint, p99 |", "|---|---:|---:|"]
    for kind, label in (("file", "local storage"), ("s3-remote", f"S3, {a['latency_ms']:.0f} ms per request")):
        runs = sorted((r for r in a["runs"] if r["storage"] == kind), key=lambda r: r["hot_orders_per_s"])
        if runs:
            median = runs[len(runs) // 2]
            pause = max((r["pause_p99_at_most_s"] or 0) for r in runs) * 1000
            lines.append(f"| {label} | {median['hot_orders_per_s']:,.0f} | ≤ {pause:g} ms |")
    lines.append(f"| remote against local | {a['remote_vs_local']:.2f}x | |")
    return "\n".join(lines)


def failover_table(results: dict) -> str:
    summary = results["failover"]["summary"]
    labels = {"kill-restart": "SIGKILL, restarted at once (default: static membership)",
              "kill-restart-dynamic": "SIGKILL, restarted at once, `--dynamic-membership`",
              "kill": "SIGKILL, not restarted (the others take over)"}
    lines = ["| failover: until every task of the killed worker has output again | median s | max s |",
             "|---|---:|---:|"]
    for scenario, label in labels.items():
        s = summary.get(scenario)
        if s and s["all_tasks_s_median"] is not None:
            lines.append(f"| {label} | {s['all_tasks_s_median']:.1f} | {s['all_tasks_s_max']:.1f} |")
    return "\n".join(lines)


def scaling_table(results: dict) -> str:
    result = results["scaling_per_core"]
    share = result["cpu_per_worker"]
    lines = [f"| scaling per core (each worker capped at {share:g} core) | 2 workers | 4 workers |",
             "|---|---:|---:|"]
    for job, rows in result["summary"].items():
        ratios = [rows.get(str(n), {}).get("ratio") for n in (2, 4)]
        lines.append(f"| {job}, against 1 worker | " + " | ".join(f"{r:.2f}x" if r else "-" for r in ratios) + " |")
    return "\n".join(lines)


def rss_table(results: dict) -> str:
    """State growing to 10,000,000 keys: the README's row beside the throughput table."""
    rss = results["rss"]
    lines = [f"| state growing to {rss['keys']:,} keys (every record a new key) | records/s | vs plain loop "
             "| vs Quix | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
    for name, run in rss["candidates"].items():
        if run.get("ok"):
            lines.append(f"| {name} | {run['records_per_s']:,.0f} | {run.get('vs_plain', 0):.2f}x | "
                         f"{run.get('vs_quix', 0):.1f}x | {run['peak_rss_mib']:,.0f} |")
    return "\n".join(lines)


def readme_tables(results: dict) -> list[str]:
    tables = [headline_table(results)]
    if "rss" in results:
        tables.append(rss_table(results))
    if "state_bound" in results:
        tables.append(state_bound.table(results["state_bound"]))
    for key, table in (("windows", window_table), ("joins", join_table), ("latency", latency_table),
                       ("async_snapshots", async_table), ("failover", failover_table),
                       ("scaling_per_core", scaling_table)):
        if key in results:
            tables.append(table(results))
    return tables


def update_readme(table: str, marker: str = "bench") -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_KAFKA_PORT", "39792")),
                    help="port of the local broker to start when no bootstrap is given")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    ap.add_argument("--only", default="throughput,state-bound,windows,joins,latency,async-snapshots,failover,"
                                      "scaling,monitoring,dead-letter,state-size,rss,postgres")
    ap.add_argument("--cpu-per-worker", type=float, default=scaling_bench.DEFAULT_CPU_PER_WORKER,
                    help="section scaling: the CPU share (cores) of each worker's cgroup")
    args = ap.parse_args(argv)
    sections = set(args.only.split(","))
    quick = args.quick
    broker = None
    if not args.bootstrap:
        broker = LocalBroker(BrokerSettings(port=args.port, heap="2g"))
        args.bootstrap = broker.start()
    DOCS.mkdir(parents=True, exist_ok=True)
    out = DOCS / ("results-quick.json" if quick else "results.json")
    results: dict = json.loads(out.read_text()) if out.exists() else {}
    results["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
                       "cpu_model": _cpu_model(), "memory_gib": round(psutil.virtual_memory().total / 2**30),
                       "platform": platform.platform(), "python": platform.python_version(),
                       "kafka": "Apache Kafka 4.4.0, one local KRaft broker on the same machine",
                       "quick": quick}

    def log(msg: str) -> None:
        print(msg, flush=True)

    records = 100_000 if quick else 1_000_000
    reps = 1 if quick else 3
    b = args.bootstrap
    runs = {  # section: (results key, what runs it)
        "throughput": ("throughput", lambda: throughput(
            b, records, *(([10_000], [1]) if quick else ([10_000, 100_000, 1_000_000], [3, 1, 1])), log)),
        "state-bound": ("state_bound", lambda: state_bound.state_bound(b, records, 1 if quick else reps, log)),
        "windows": ("windows", lambda: window_bench.window_throughput(b, records, 1_000 if quick else 10_000,
                                                                      reps, log)),
        "joins": ("joins", lambda: join_bench.join_throughput(b, records, 1_000 if quick else 10_000, reps, log)),
        "latency": ("latency", lambda: latency_bench.latency(b, records, 1_000 if quick else 10_000,
                                                             10.0 if quick else 25.0, reps, log)),
        "async-snapshots": ("async_snapshots", lambda: async_snapshot_bench.async_snapshots(
            b, 100_000 if quick else 1_000_000, 200_000 if quick else 4_000_000, 20.0, 1 if quick else 2, log)),
        "failover": ("failover", lambda: scale_out.recovery(argparse.Namespace(
            bootstrap=b, reps=reps, rate=2000.0, users=1000, warmup=8.0 if quick else 12.0, observe=20.0,
            scenarios="kill-restart,kill-restart-dynamic,kill"))),
        "scaling": ("scaling_per_core", lambda: scaling_bench.scaling_per_core(
            b, 300_000 if quick else 2_000_000, 10_000, reps, args.cpu_per_worker, log)),
        "monitoring": ("monitoring", lambda: monitoring_cost(b, records, 10_000, reps, log)),
        "dead-letter": ("dead_letter", lambda: dead_letter_cost(b, records, 10_000, reps, log)),
        "state-size": ("checkpoint_vs_state", lambda: checkpoint_vs_state(
            [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000], log)),
        "rss": ("rss", lambda: rss_with_many_keys(b, 500_000 if quick else 10_000_000, log)),
        "postgres": ("postgres", lambda: postgres_bench.postgres_throughput(
            b, records if quick else postgres_bench.RECORDS, 10_000, 1 if quick else postgres_bench.REPS, log)),
    }
    for section, (key, run) in runs.items():
        if section in sections:
            results[key] = run()
            out.write_text(json.dumps(results, indent=1, default=str) + "\n")  # a later section may fail
    if "latency" in sections and not quick:
        latency_bench.plot(results["latency"], DOCS / "latency.png")
    if "scaling" in sections:  # a quick run's plot says so in its title
        scaling_bench.plot(results["scaling_per_core"], DOCS / "scaling.png", quick)
    if "postgres" in sections and not quick:
        update_readme(postgres_bench.table(results["postgres"]), "bench-postgres")
        postgres_bench.plot(results["postgres"], DOCS / "postgres.png")
    if not quick and {"throughput", "checkpoint_vs_state", "rss"} <= set(results):
        plots(results)
        update_readme("\n\n".join(readme_tables(results)))
    print(headline_table(results) if "throughput" in results else "")
    print(f"results: {out}")
    if broker is not None:
        broker.stop()
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
