"""Windows: a tumbling-window count per user, eos against Quix Streams, same broker, same
input, interleaved repetitions (bench/runner.py's protocol).

The input: N orders keyed by user, event time (Kafka timestamp) 1 ms apart from three
hours ago, then flush records on every partition an hour later, so every window of the
orders closes. The clock runs until the last window result is committed; throughput is
input records per second over that time. Both candidates must emit exactly one result per
(user, window): the number of distinct pairs, computed from the input here.
"""

from __future__ import annotations

import time

import orjson
from confluent_kafka import Producer

import runner
import workload
from runner import MAIN_PY, REGISTRY, register, run_once

WINDOW_MS = 10_000
STEP_MS = 1


def _eos_window(ctx: runner.RunContext) -> list[str]:
    return [MAIN_PY, "-m", "service.cli", "--log-level", "WARNING", "run", str(ctx.bench_dir / "jobs" / "window_count.py"),
            "--bootstrap-servers", ctx.bootstrap, "--group", ctx.group, "--state-dir", str(ctx.workdir / "eos-state"),
            "--checkpoint-storage", f"file://{ctx.workdir / 'eos-checkpoints'}",
            "--checkpoint-interval", f"{ctx.commit_interval}s", "--worker-id", "bench",
            "-p", f"input={ctx.input_topic}", "-p", f"output={ctx.output_topic}"]


register("eos-window-count", _eos_window,
         description="eos 10 s tumbling window count per user, final results, exactly-once")
register("quix-window-count",
         lambda ctx: [runner.QUIX_PY, str(ctx.bench_dir / "quix_window_count.py"), *runner._common_args(ctx),
                      "--state-dir", str(ctx.workdir / "quix-state")],
         prepare=runner.ensure_quix_venv,
         description="Quix Streams 3.28.1 tumbling_window(10 s).count().final(closing_strategy=partition), "
                     "exactly-once")


def produce_timed_input(bootstrap: str, records: int, users: int, seed: int) -> tuple[str, int]:
    """The input topic and how many window results it must give."""
    topic = f"bench-win-r{records}-u{users}-s{seed}-{int(time.time())}"
    workload.create_topic(bootstrap, topic)
    base = (int(time.time() * 1000) - 3 * 3_600_000) // WINDOW_MS * WINDOW_MS
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                         "batch.size": 1_000_000, "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})
    def send(value: bytes, key: bytes, ts: int, **partition: int) -> None:
        while True:
            try:
                producer.produce(topic, value, key, timestamp=ts, **partition)
                return
            except BufferError:
                producer.poll(0.05)

    windows: set[tuple[bytes, int]] = set()
    for i, (key, value) in enumerate(workload.generate(records, users, seed)):
        ts = base + i * STEP_MS
        windows.add((key, ts // WINDOW_MS))
        send(value, key, ts)
    # Two flush records per partition: Quix Streams expires windows with the stream time
    # it had before the current record, so one would leave its last window open.
    flush_ts = base + records * STEP_MS + 3_600_000
    for partition in range(workload.PARTITIONS):
        for later in (0, 1):
            send(orjson.dumps({"id": -1, "user": "flush", "amount": 0}), b"flush", flush_ts + later,
                 partition=partition)
    if producer.flush(120):
        raise RuntimeError("window benchmark input not delivered")
    return topic, len(windows)


def window_throughput(bootstrap: str, records: int, users: int, reps: int, log) -> dict:
    for name in ("eos-window-count", "quix-window-count"):
        if REGISTRY[name].prepare:
            REGISTRY[name].prepare()
    topic, results_expected = produce_timed_input(bootstrap, records, users, workload.DEFAULT_SEED)
    log(f"windows: {records:,} orders, {users:,} users -> {results_expected:,} window results")
    runs: dict[str, list[float]] = {"eos-window-count": [], "quix-window-count": []}
    logdir = runner.Path(runner.tempfile.mkdtemp(prefix="bench-window-logs-"))
    for rep in range(reps):
        for name in runs:
            time.sleep(2.0)
            r = run_once(REGISTRY[name], bootstrap=bootstrap, input_topic=topic, records=results_expected,
                         users=users, rep=rep, commit_interval=1.0, timeout=900.0, verify=False, keep_topics=False,
                         logdir=logdir, broker_pid=runner.find_broker_pid(bootstrap), log=log)
            if r.get("ok"):
                runs[name].append(records / r["elapsed_s"])
                log(f"  {name} rep {rep}: {records / r['elapsed_s']:,.0f} input records/s ({r['elapsed_s']:.1f}s)")
    eos, quix = (sorted(v)[len(v) // 2] if v else None for v in runs.values())
    workload.delete_topics(bootstrap, [topic])
    return {"records": records, "users": users, "window_ms": WINDOW_MS, "results": results_expected,
            "input_records_per_s": {k: v for k, v in runs.items()},
            "eos_median": eos, "quix_median": quix,
            "vs_quix": eos / quix if eos and quix else None}
