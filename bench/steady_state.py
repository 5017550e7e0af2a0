"""`make bench-windows-steady`: state stays bounded on an unbounded stream.

A windowed job with state that has a time to live (bench/jobs/steady_windows.py) runs for
a fixed time (10 minutes) at a steady input rate, while users keep arriving and leaving:
at second t the active users are ids [t * churn, t * churn + active), so `churn` new users
appear every second and as many fall silent for good. Without a TTL the per-user totals
would grow by `churn` keys a second forever; with it they hold the users of the last TTL
plus the active ones. Every `--sample-every` seconds the benchmark records the worker's
RSS, its input lag, and the state as the newest checkpoint of every task describes it
(keys per operator, counted in a copy restored from checkpoint storage, and the
snapshot's bytes). Results: docs/bench/steady-state.json and docs/bench/steady-state.png.

    .venv-bench/bin/python bench/steady_state.py [--minutes 10] [--rate 4000] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import psutil
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DOCS = REPO / "docs" / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

import workload  # noqa: E402

from service.local_kafka import BrokerSettings, LocalBroker  # noqa: E402
from statestore.catalog import scan  # noqa: E402
from statestore.digests import DigestCache  # noqa: E402
from statestore.rocks import TaskStore  # noqa: E402
from statestore.snapshots import SnapshotRestorer  # noqa: E402
from statestore.storage.file import FileStorage  # noqa: E402

JOB = BENCH_DIR / "jobs" / "steady_windows.py"


def _eos(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


class SteadyInput:
    """Produces `rate` orders a second, in 100 ms slices, timestamped now."""

    def __init__(self, bootstrap: str, topic: str, rate: int, churn: int, active: int) -> None:
        self.topic, self.rate, self.churn, self.active = topic, rate, churn, active
        self.produced = 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random",
                                   "queue.buffering.max.messages": 500_000})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-input", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._producer.flush(60)

    def _run(self) -> None:
        rng, began, per_slice = random.Random(7), time.monotonic(), self.rate / 10
        slices = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - began
            first_user = int(elapsed * self.churn)
            for _ in range(int(per_slice * (slices + 1)) - int(per_slice * slices)):
                user = f"user-{first_user + rng.randrange(self.active)}"
                value = orjson.dumps({"id": self.produced, "user": user, "amount": rng.randint(1, 100)})
                while True:
                    try:
                        self._producer.produce(self.topic, value, user.encode())
                        break
                    except BufferError:
                        self._producer.poll(0.05)
                self.produced += 1
            self._producer.poll(0)
            slices += 1
            time.sleep(max(0.0, began + slices / 10 - time.monotonic()))


def _state_of(storage: Path, group: str) -> dict:
    """The state of the newest complete checkpoint of every task: keys per operator,
    counted exactly in a copy restored from checkpoint storage (RocksDB's own estimate,
    which the manifests carry, also counts deletions not yet compacted away), the
    snapshot's bytes, and how far the source tasks had read."""
    files = FileStorage(storage)
    keys: dict[str, int] = {}
    total_bytes = read = 0
    for catalog in scan(files, group):
        record = catalog.newest_complete
        if record is None or record.manifest is None:
            continue
        manifest = record.manifest
        total_bytes += manifest.total_bytes
        if "-repartition-" not in catalog.task:
            read += manifest.source_offset
        with tempfile.TemporaryDirectory(prefix="steady-count-") as copy:
            SnapshotRestorer(files, catalog.prefix, DigestCache()).restore(manifest, Path(copy), [])
            store = TaskStore(Path(copy), manifest.column_families)
            try:
                for family in manifest.column_families:
                    operator = family.split(":", 1)[0]
                    keys[operator] = keys.get(operator, 0) + sum(1 for _ in store.items(family))
            finally:
                store.close()
    return {"keys": keys, "bytes": total_bytes, "read": read}


def _count_outputs(bootstrap: str, topic: str) -> int:
    """Committed records of a topic (its offsets also count transaction markers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"steady-count-{uuid.uuid4().hex[:6]}",
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(workload.PARTITIONS)])
    total, ended = 0, set()
    try:
        while len(ended) < workload.PARTITIONS:
            for msg in consumer.consume(10_000, timeout=5):
                if msg.error() is None:
                    total += 1
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(msg.partition())
        return total
    finally:
        consumer.close()


def run(bootstrap: str, minutes: float, rate: int, churn: int, active: int, every: float, log) -> dict:
    run_id = uuid.uuid4().hex[:6]
    topics = {name: f"steady-{name}-{run_id}" for name in ("orders", "windows", "totals")}
    for topic in topics.values():
        workload.create_topic(bootstrap, topic)
    workdir = Path(tempfile.mkdtemp(prefix="bench-steady-"))
    group, storage = f"steady-{run_id}", workdir / "checkpoints"
    argv = _eos("--log-level", "WARNING", "run", str(JOB), "--bootstrap-servers", bootstrap, "--group", group,
                "--state-dir", str(workdir / "state"), "--checkpoint-storage", f"file://{storage}", "--checkpoint-interval", "1s",
                "--worker-id", "steady", "-p", f"input={topics['orders']}", "-p", f"windows={topics['windows']}",
                "-p", f"totals={topics['totals']}")
    source = SteadyInput(bootstrap, topics["orders"], rate, churn, active)
    samples = []
    with open(workdir / "worker.log", "wb") as worker_log:
        worker = subprocess.Popen(argv, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    process = psutil.Process(worker.pid)
    source.start()
    began = time.monotonic()
    try:
        while time.monotonic() - began < minutes * 60:
            time.sleep(every)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}; see {workdir / 'worker.log'}")
            state = _state_of(storage, group)
            sample = {"t": round(time.monotonic() - began, 1), "rss_mib": round(process.memory_info().rss / 2**20, 1),
                      "produced": source.produced, "lag": source.produced - state["read"], **state}
            samples.append(sample)
            log(f"  {sample['t']:6.0f}s rss {sample['rss_mib']:6.1f} MiB  state {sample['bytes'] / 2**20:6.1f} MiB  "
                f"keys {sample['keys']}  lag {sample['lag']:,}")
    finally:
        source.stop()
        cpu = process.cpu_times()
        worker.terminate()
        worker.wait(120)
    totals = _count_outputs(bootstrap, topics["totals"])
    workload.delete_topics(bootstrap, list(topics.values()))
    users_seen = int(minutes * 60 * churn) + active
    return {"minutes": minutes, "rate": rate, "churn_users_per_s": churn, "active_users": active,
            "ttl_ms": 60_000, "window_ms": 10_000, "produced": source.produced, "totals_out": totals,
            "users_seen": users_seen, "worker_cpu_s": round(cpu.user + cpu.system, 1), "samples": samples}


def plot(result: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    fig, (keys_ax, bytes_ax, rss_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
    for operator in sorted({o for s in samples for o in s["keys"]}):
        keys_ax.plot(minutes, [s["keys"].get(operator, 0) / 1000 for s in samples], label=operator)
    seen = [min(result["users_seen"], result["active_users"] + s["t"] * result["churn_users_per_s"]) / 1000
            for s in samples]
    keys_ax.plot(minutes, seen, "--", color="grey", label="users seen (state without TTL)")
    keys_ax.set_title("keys in state (thousands)"), keys_ax.set_xlabel("minutes"), keys_ax.legend(fontsize=7)
    bytes_ax.plot(minutes, [s["bytes"] / 2**20 for s in samples])
    bytes_ax.set_title("checkpointed state (MiB)"), bytes_ax.set_xlabel("minutes"), bytes_ax.set_ylim(bottom=0)
    rss_ax.plot(minutes, [s["rss_mib"] for s in samples])
    rss_ax.set_title("worker RSS (MiB)"), rss_ax.set_xlabel("minutes"), rss_ax.set_ylim(bottom=0)
    fig.suptitle(f"{result['rate']:,} orders/s for {result['minutes']:g} min, {result['churn_users_per_s']} new "
                 f"users/s, TTL {result['ttl_ms'] // 1000} s, 10 s windows", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("BENCH_KAFKA_PORT", "39792")))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=4_000, help="orders per second")
    ap.add_argument("--churn", type=int, default=200, help="new users per second (as many fall silent)")
    ap.add_argument("--active", type=int, default=20_000, help="users active at any time")
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--out", type=Path, default=DOCS / "steady-state.json")
    args = ap.parse_args(argv)
    broker = None
    if not args.bootstrap:
        broker = LocalBroker(BrokerSettings(port=args.port, heap="2g"))
        args.bootstrap = broker.start()
    try:
        result = run(args.bootstrap, args.minutes, args.rate, args.churn, args.active, args.sample_every,
                     lambda msg: print(msg, flush=True))
    finally:
        if broker is not None:
            broker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"results: {args.out}, plot: {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
