"""Joins: orders enriched with their user's profile, eos's stream-table join against Quix
Streams' `join_asof` and the hand-written confluent-kafka loop with a dict, same broker,
same input, interleaved repetitions (bench/runner.py's protocol).

The input: a profiles topic (one profile per user, keyed by user) produced first, then
N orders keyed by user; both with the same partitions. The clock runs until the N-th
enriched order is committed; throughput is orders per second over that time.
"""

from __future__ import annotations

import time

import orjson
from confluent_kafka import Producer

import runner
import workload
from runner import MAIN_PY, REGISTRY, register, run_once

COUNTRIES = ("de", "fr", "it", "es", "nl", "pl", "pt", "se")


def profiles_topic(orders_topic: str) -> str:
    return f"{orders_topic}-profiles"


def _eos_enrichment(ctx: runner.RunContext) -> list[str]:
    return [MAIN_PY, "-m", "service.cli", "--log-level", "WARNING", "run", str(ctx.bench_dir / "jobs" / "enrichment.py"),
            "--bootstrap-servers", ctx.bootstrap, "--group", ctx.group, "--state-dir", str(ctx.workdir / "eos-state"),
            "--checkpoint-storage", f"file://{ctx.workdir / 'eos-checkpoints'}",
            "--checkpoint-interval", f"{ctx.commit_interval}s", "--worker-id", "bench",
            "-p", f"input={ctx.input_topic}", "-p", f"profiles={profiles_topic(ctx.input_topic)}",
            "-p", f"output={ctx.output_topic}"]


register("eos-enrichment", _eos_enrichment,
         description="eos stream-table join (orders with their user's profile), exactly-once")
register("quix-enrichment",
         lambda ctx: [runner.QUIX_PY, str(ctx.bench_dir / "quix_enrichment.py"), *runner._common_args(ctx),
                      "--profiles", profiles_topic(ctx.input_topic), "--state-dir", str(ctx.workdir / "quix-state")],
         prepare=runner.ensure_quix_venv,
         description="Quix Streams 3.28.1 join_asof(how=left), exactly-once")
register("plain-enrichment",
         lambda ctx: [MAIN_PY, str(ctx.bench_dir / "plain_enrichment.py"), *runner._common_args(ctx),
                      "--profiles", profiles_topic(ctx.input_topic)],
         description="hand-written confluent-kafka transactional loop, profiles in a dict (ceiling)")

CANDIDATES = ("eos-enrichment", "quix-enrichment", "plain-enrichment")


def produce_input(bootstrap: str, records: int, users: int, seed: int) -> str:
    """The orders topic (its profiles topic beside it)."""
    topic = f"bench-join-r{records}-u{users}-s{seed}-{int(time.time())}"
    workload.create_topic(bootstrap, topic)
    workload.create_topic(bootstrap, profiles_topic(topic))
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20,
                         "batch.size": 1_000_000, "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})

    def send(target: str, value: bytes, key: bytes) -> None:
        while True:
            try:
                producer.produce(target, value, key)
                return
            except BufferError:
                producer.poll(0.05)

    for user in range(users):
        send(profiles_topic(topic), orjson.dumps({"user": f"u{user}", "country": COUNTRIES[user % len(COUNTRIES)]}),
             f"u{user}".encode())
    if producer.flush(120):
        raise RuntimeError("join benchmark profiles not delivered")
    for key, value in workload.generate(records, users, seed):
        send(topic, value, key)
    if producer.flush(120):
        raise RuntimeError("join benchmark input not delivered")
    return topic


def join_throughput(bootstrap: str, records: int, users: int, reps: int, log) -> dict:
    for name in CANDIDATES:
        if REGISTRY[name].prepare:
            REGISTRY[name].prepare()
    topic = produce_input(bootstrap, records, users, workload.DEFAULT_SEED)
    log(f"joins: {records:,} orders of {users:,} users, each joined with its user's profile")
    runs: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    logdir = runner.Path(runner.tempfile.mkdtemp(prefix="bench-join-logs-"))
    for rep in range(reps):
        for name in runs:
            time.sleep(2.0)
            r = run_once(REGISTRY[name], bootstrap=bootstrap, input_topic=topic, records=records, users=users,
                         rep=rep, commit_interval=1.0, timeout=900.0, verify=False, keep_topics=False,
                         logdir=logdir, broker_pid=runner.find_broker_pid(bootstrap), log=log)
            if r.get("ok"):
                runs[name].append(records / r["elapsed_s"])
                log(f"  {name} rep {rep}: {records / r['elapsed_s']:,.0f} orders/s ({r['elapsed_s']:.1f}s)")
    medians = {name: sorted(v)[len(v) // 2] if v else None for name, v in runs.items()}
    workload.delete_topics(bootstrap, [topic, profiles_topic(topic)])
    eos, quix, plain = (medians[name] for name in CANDIDATES)
    return {"records": records, "users": users, "orders_per_s": runs, "medians": medians,
            "vs_quix": eos / quix if eos and quix else None, "vs_plain": eos / plain if eos and plain else None}
