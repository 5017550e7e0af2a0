"""Asynchronous snapshots: throughput and the pause per checkpoint with checkpoint storage
far away, against the same job on local storage.

The one-stage running sum (input keyed by user) first builds a state of `keys` users
(one order each), then runs `hot` orders over a hot set of 1% of them, so each
checkpoint (every second) changes at most 1% of the state; the measurement starts once
the checkpoint holding the end of the build-up completed. Storage: a local directory,
and an S3 server behind a proxy that adds `latency_ms` to every request (a store in
another building). Measured on the hot part: orders per second (from the commit of the
last build-up output to the commit of the last output), and the pause per checkpoint
(the synchronous part, while the loop waits) from the worker's
`eos_checkpoint_sync_duration_seconds` histogram, scraped before and after it.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
from confluent_kafka import Producer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import workload  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.s3_server import running_s3_server  # noqa: E402
from tests.harness.tcp_proxy import TcpProxy  # noqa: E402

HISTOGRAM = "eos_checkpoint_sync_duration_seconds"


def produce_input(bootstrap: str, keys: int, hot: int, seed: int = 7) -> str:
    topic = f"bench-async-{keys}-{hot}-{uuid.uuid4().hex[:6]}"
    workload.create_topic(bootstrap, topic)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
                         "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})
    rng = random.Random(seed)
    hot_users = rng.sample(range(keys), max(1, keys // 100))

    def send(i: int, user: int) -> None:
        name = f"u{user}"
        value = orjson.dumps({"id": i, "user": name, "amount": rng.randint(1, 100)})
        while True:
            try:
                producer.produce(topic, value, name.encode())
                return
            except BufferError:
                producer.poll(0.05)

    for i in range(keys):
        send(i, i)
    for i in range(hot):
        send(keys + i, rng.choice(hot_users))
    if producer.flush(300):
        raise RuntimeError("input not delivered")
    return topic


def _buckets(url: str) -> dict[float, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(HISTOGRAM + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            found[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return found


def _after_next_checkpoint(url: str) -> dict[float, float]:
    """The histogram once the checkpoint that holds the end of the build-up (every key
    new, up to a second of them) has completed: from then on each checkpoint changes the
    hot 1% only."""
    first = _buckets(url).get(float("inf"), 0.0)
    while True:
        now = _buckets(url)
        if now.get(float("inf"), 0.0) > first:
            return now
        time.sleep(0.02)


def _p99(before: dict[float, float], after: dict[float, float]) -> tuple[float | None, int]:
    """The bucket bound under which 99% of the pauses between the two scrapes fall (s)."""
    deltas = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = deltas[-1][1] if deltas else 0
    if not total:
        return None, 0
    return next(le for le, count in deltas if count >= 0.99 * total), int(total)


@contextlib.contextmanager
def storage(kind: str, scratch: Path, latency_ms: float) -> Iterator[tuple[list[str], dict[str, str]]]:
    if kind == "file":
        yield ["--checkpoint-storage", f"file://{scratch / 'checkpoints'}"], {}
        return
    with running_s3_server() as server:
        proxy = TcpProxy(server.host, server.port, latency_s=latency_ms / 1000)
        try:
            env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
            yield (["--checkpoint-storage", f"s3://{server.bucket}/{scratch.name}",
                    "--s3-endpoint-url", proxy.endpoint], env)
        finally:
            proxy.close()


def run(bootstrap: str, topic: str, keys: int, hot: int, kind: str, latency_ms: float) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-async-{kind}-"))
    output, group = f"bench-async-out-{uuid.uuid4().hex[:8]}", f"bench-async-{uuid.uuid4().hex[:8]}"
    workload.create_topic(bootstrap, output)
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    watcher = workload.OutputWatcher(bootstrap, output)
    with storage(kind, scratch, latency_ms) as (storage_args, env):
        argv = [sys.executable, "-m", "service.cli", "--log-level", "INFO", "run",
                str(REPO / "examples" / "running_sum_prekeyed.py"), "--bootstrap-servers", bootstrap,
                "--group", group, "--state-dir", str(scratch / "state"), *storage_args,
                "--checkpoint-interval", "1s", "--worker-id", "bench", "--http-port", str(port),
                "-p", f"input={topic}", "-p", f"output={output}"]
        with open(scratch / "worker.log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            built = watcher.wait(keys, 900, alive=lambda: proc.poll() is None)
            before = _after_next_checkpoint(metrics)
            done = watcher.wait(keys + hot, 900, alive=lambda: proc.poll() is None)
            after = _buckets(metrics)
        finally:
            proc.terminate()
            proc.wait(120)
            watcher.close()
    summary = next((line for line in (scratch / "worker.log").read_text(errors="replace").splitlines()
                    if "checkpoints completed" in line), "")
    p99, pauses = _p99(before, after)
    workload.delete_topics(bootstrap, [t for t in workload.list_topics(bootstrap) if group in t or t == output])
    return {"storage": kind, "latency_ms": latency_ms if kind != "file" else 0, "keys": keys, "hot_orders": hot,
            "hot_orders_per_s": hot / (done - built), "pause_p99_at_most_s": p99, "checkpoints_measured": pauses,
            "worker_summary": summary.split(": ", 1)[-1]}


def async_snapshots(bootstrap: str, keys: int, hot: int, latency_ms: float, reps: int, log) -> dict:
    topic = produce_input(bootstrap, keys, hot)
    log(f"asynchronous snapshots: {keys:,} keys, then {hot:,} orders over 1% of them; storage: local, and S3 "
        f"with {latency_ms:.0f} ms added per request")
    runs = []
    for rep in range(reps):
        for kind in ("file", "s3-remote"):
            r = run(bootstrap, topic, keys, hot, kind, latency_ms)
            runs.append(r)
            log(f"  {kind} rep {rep}: {r['hot_orders_per_s']:,.0f} orders/s, pause p99 <= "
                f"{(r['pause_p99_at_most_s'] or 0) * 1000:.1f} ms over {r['checkpoints_measured']} checkpoints")
    workload.delete_topics(bootstrap, [topic])

    def median(kind: str) -> float:
        values = sorted(r["hot_orders_per_s"] for r in runs if r["storage"] == kind)
        return values[len(values) // 2]

    return {"keys": keys, "hot_orders": hot, "latency_ms": latency_ms, "runs": runs,
            "remote_vs_local": median("s3-remote") / median("file"),
            "pause_p99_at_most_s": max((r["pause_p99_at_most_s"] or 0) for r in runs)}
