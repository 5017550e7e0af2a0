"""Checkpoint cost of a task's state, incremental vs full, on file and S3 storage.

The state store's own code runs as a worker runs it (write-back table, flush, RocksDB
checkpoint, persist, retention); Kafka is left out because the transaction commit does
not depend on the state's size. Measured:

* checkpoint duration (the synchronous phase: flush + snapshot + upload + manifest +
  retention) p50/p99 and bytes uploaded per checkpoint, with `--keys` keys in state and
  `--changed` of them changed between checkpoints;
* bytes uploaded against the fraction of keys changed (incremental, file storage);
* recovery of a `--recovery-keys` state from storage on a machine without local files
  (download + SHA-256 verification + open), and on the same machine (local reuse).

Storages: `file` (local disk), `s3` (moto server over HTTP on this machine), `s3-remote`
(the same through a proxy adding `--remote-latency-ms` per request, like a store in
another building).

    .venv/bin/python bench/checkpoint_bench.py                      # full run, writes docs/bench/
    .venv/bin/python bench/checkpoint_bench.py --quick              # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

from service.checkpointing.coordinator import STORAGE_THREADS  # noqa: E402
from statestore.codecs import JSON_CODEC  # noqa: E402
from statestore.digests import DigestCache  # noqa: E402
from statestore.manifest import Manifest  # noqa: E402
from statestore.retention import RetainedSnapshots, snapshot_name  # noqa: E402
from statestore.snapshots import task_prefix  # noqa: E402
from statestore.state_dir import TaskDirectory  # noqa: E402
from statestore.storage import FileStorage  # noqa: E402
from statestore.storage.base import CheckpointStorage  # noqa: E402
from statestore.storage.s3 import S3Storage  # noqa: E402
from statestore.task_state import TaskState  # noqa: E402
from tests.harness.s3_server import running_s3_server  # noqa: E402
from tests.harness.tcp_proxy import TcpProxy  # noqa: E402

TABLE = "totals:acc"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def value_of(user: int, n: int) -> dict:
    return {"user": f"user-{user}", "sum": n * 37 % 100_000, "count": n, "last_id": n * 7919}


class StorageFactory:
    """Fresh, empty storage locations of one kind."""

    def __init__(self, kind: str, scratch: Path, s3_endpoint: str | None, bucket: str | None) -> None:
        self.kind, self.scratch, self.endpoint, self.bucket = kind, scratch, s3_endpoint, bucket

    def new(self) -> CheckpointStorage:
        if self.kind == "file":
            return FileStorage(self.scratch / f"storage-{uuid.uuid4().hex[:8]}")
        return S3Storage(self.bucket, f"bench-{uuid.uuid4().hex[:8]}", endpoint_url=self.endpoint,
                         region="us-east-1", access_key="bench", secret_key="bench")


class CheckpointingTask:
    """One task's state checkpointed as the coordinator does it, phase by phase."""

    def __init__(self, storage: CheckpointStorage, state_root: Path, incremental: bool, retain: int = 3) -> None:
        self.storage = storage
        self.token = uuid.uuid4().hex[:8]
        directory = TaskDirectory(state_root, "bench", "in-0", self.token)
        self.state = TaskState(directory, storage, "bench", "in-0", DigestCache(), incremental=incremental)
        self.state.open(None)
        self.table = self.state.value_table(TABLE, JSON_CODEC)
        self.retention = RetainedSnapshots(storage, task_prefix("bench", "in-0"), retain,
                                           self.state.restorer.load_manifest, shared_grace_s=600)
        self.previous: Manifest | None = None
        self.n = 0
        # As the checkpoint coordinator does: a checkpoint's storage calls run in parallel.
        self.pool = ThreadPoolExecutor(max_workers=STORAGE_THREADS)

    def checkpoint(self) -> dict:
        self.n += 1
        name = snapshot_name(self.n, self.token)
        t0 = time.perf_counter()
        self.state.flush()
        t1 = time.perf_counter()
        local = self.state.snapshot_local(name)
        t2 = time.perf_counter()
        build = partial(Manifest, job="bench", task="in-0", topic="in", partition=0, checkpoint_id=self.n,
                        snapshot=name, worker="bench", created_at=time.time(), source_offset=self.n,
                        lineage=self.retention.lineage_for_next())
        manifest = self.state.persist(local, build, self.previous, pool=self.pool).manifest
        t3 = time.perf_counter()
        self.retention.completed(manifest)
        self.state.directory.prune_snapshots(keep={name})
        t4 = time.perf_counter()
        self.previous = manifest
        return {"total_s": t4 - t0, "flush_s": t1 - t0, "snapshot_s": t2 - t1, "persist_s": t3 - t2,
                "retention_s": t4 - t3, "uploaded_bytes": manifest.uploaded_bytes,
                "total_bytes": manifest.total_bytes, "files": len(manifest.files)}

    def close(self) -> None:
        self.state.close()
        self.pool.shutdown()


def checkpoint_series(factory: StorageFactory, scratch: Path, *, keys: int, changed: float, checkpoints: int,
                      incremental: bool, seed: int = 1) -> dict:
    rng = random.Random(seed)
    task = CheckpointingTask(factory.new(), scratch / f"state-{uuid.uuid4().hex[:6]}", incremental)
    for user in range(keys):
        task.table.put(f"user-{user}", value_of(user, 0))
    initial = task.checkpoint()
    per_round = max(1, int(keys * changed))
    rounds = []
    for n in range(1, checkpoints + 1):
        for user in rng.sample(range(keys), per_round):
            task.table.put(f"user-{user}", value_of(user, n))
        rounds.append(task.checkpoint())
    task.close()
    durations = [r["total_s"] for r in rounds]
    uploaded = [r["uploaded_bytes"] for r in rounds]
    return {
        "storage": factory.kind, "mode": "incremental" if incremental else "full", "keys": keys,
        "changed_keys_per_checkpoint": per_round, "checkpoints": checkpoints,
        "initial": initial,
        "duration_p50_ms": 1000 * percentile(durations, 50), "duration_p99_ms": 1000 * percentile(durations, 99),
        "duration_mean_ms": 1000 * statistics.fmean(durations),
        "persist_p50_ms": 1000 * percentile([r["persist_s"] for r in rounds], 50),
        "persist_p99_ms": 1000 * percentile([r["persist_s"] for r in rounds], 99),
        "uploaded_p50_bytes": percentile(uploaded, 50), "uploaded_p99_bytes": percentile(uploaded, 99),
        "uploaded_mean_bytes": statistics.fmean(uploaded),
        "state_bytes": rounds[-1]["total_bytes"],
        "rounds": rounds,
    }


def recovery(factory: StorageFactory, scratch: Path, keys: int) -> dict:
    storage = factory.new()
    source = CheckpointingTask(storage, scratch / f"state-{uuid.uuid4().hex[:6]}", incremental=True)
    batch = 100_000
    for start in range(0, keys, batch):
        for user in range(start, min(keys, start + batch)):
            source.table.put(f"user-{user}", value_of(user, 1))
        source.state.spill()
    built = source.checkpoint()
    manifest = source.previous
    source.close()

    def restore(state_root: Path) -> tuple[float, float, object]:
        directory = TaskDirectory(state_root, "bench", "in-0", uuid.uuid4().hex[:8])
        state = TaskState(directory, storage, "bench", "in-0", DigestCache())
        began = time.perf_counter()
        stats = state.open(manifest)
        opened = time.perf_counter() - began
        table = state.value_table(TABLE, JSON_CODEC)
        rng = random.Random(3)
        probe = rng.sample(range(keys), 1000)
        assert all(table.get(f"user-{u}") == value_of(u, 1) for u in probe), "restored state differs"
        first_reads = time.perf_counter() - began - opened
        state.close()
        return opened, first_reads, stats

    remote_s, reads_s, remote_stats = restore(scratch / f"machine-{uuid.uuid4().hex[:6]}")
    # Same machine: the source's local snapshot copy is still in its state directory.
    local_s, _, local_stats = restore(source.state.directory.path.parents[1])
    return {"storage": factory.kind, "keys": keys, "state_bytes": built["total_bytes"],
            "files": built["files"], "new_machine_s": remote_s, "new_machine_downloaded": remote_stats.downloaded,
            "first_1000_reads_s": reads_s, "same_machine_s": local_s,
            "same_machine_reused": local_stats.reused_local, "same_machine_downloaded": local_stats.downloaded}


def compaction_study(scratch: Path, keys: int, changed: float, checkpoints: int) -> list[dict]:
    """Leveled compaction (RocksDB's default) against the universal compaction the state
    store uses, on file storage: what each makes incremental checkpoints upload."""
    import rocksdict

    import statestore.rocks as rocks

    ours = rocks._options

    def leveled() -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_write_buffer_size(16 << 20)
        return opts

    results = []
    factory = StorageFactory("file", scratch, None, None)
    try:
        for name, options in (("leveled (RocksDB default)", leveled), ("universal + bloom (eos)", ours)):
            rocks._options = options
            s = checkpoint_series(factory, scratch, keys=keys, changed=changed, checkpoints=checkpoints,
                                  incremental=True)
            s["compaction"] = name
            del s["rounds"]
            results.append(s)
            print(f"{name:>26}: uploaded p50 {s['uploaded_p50_bytes'] / 1024:.0f} KiB mean "
                  f"{s['uploaded_mean_bytes'] / 1024:.0f} KiB p99 {s['uploaded_p99_bytes'] / 1024:.0f} KiB; "
                  f"duration p50 {s['duration_p50_ms']:.1f} ms p99 {s['duration_p99_ms']:.1f} ms; "
                  f"stored {s['state_bytes'] / 1024:.0f} KiB", flush=True)
    finally:
        rocks._options = ours
    return results


_SUMMARY = re.compile(r"(\d+) checkpoints completed, (\d+) failed; duration p50 (\d+) ms, p99 (\d+) ms; "
                      r"processing paused p50 ([\d.]+) ms, p99 ([\d.]+) ms, ([\d.]+)% of (\d+)s; "
                      r"checkpoint steps \(([^)]*)\)")


def end_to_end(kind: str, factory: StorageFactory, bootstrap: str, records: int, users: int,
               interval: str, scratch: Path) -> dict:
    """The real worker on pre-produced input: throughput, and from its shutdown summary
    the share of wall time spent in checkpoints and in their uploads."""
    import subprocess

    import workload

    topic = workload.ensure_input(bootstrap, records, users)
    run = uuid.uuid4().hex[:8]
    output, group = f"ckpt-bench-out-{run}", f"ckpt-bench-{run}"
    workload.create_topic(bootstrap, output)
    if kind == "file":
        storage_args = ["--checkpoint-storage", f"file://{scratch / ('e2e-' + run)}"]
    else:
        storage_args = ["--checkpoint-storage", f"s3://{factory.bucket}/{group}", "--s3-endpoint-url", factory.endpoint]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    argv = [sys.executable, "-m", "service.cli", "run", str(REPO / "examples" / "running_sum.py"),
            "--bootstrap-servers", bootstrap, "--group", group, "--state-dir", str(scratch / f"e2e-state-{run}"),
            *storage_args, "--checkpoint-interval", interval, "--worker-id", "bench",
            "-p", f"input={topic}", "-p", f"output={output}"]
    log_path = scratch / f"e2e-{run}.log"
    watcher = workload.OutputWatcher(bootstrap, output)
    try:
        with open(log_path, "wb") as log_file:
            started = time.monotonic()
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            done = watcher.wait(records, 900, alive=lambda: proc.poll() is None)
            proc.terminate()
            proc.wait(120)
    finally:
        watcher.close()
        workload.delete_topics(bootstrap, [t for t in workload.list_topics(bootstrap) if group in t or t == output])
    text = log_path.read_text(errors="replace")
    match = _SUMMARY.search(text)
    if match is None:
        raise RuntimeError(f"no checkpoint summary in the worker's log:\n{text[-2000:]}")
    completed, failed, p50, p99, pause50, pause99, share, wall, steps = match.groups()
    step_share = {name: float(pct) for name, pct in re.findall(r"([\w+]+) ([\d.]+)%", steps)}
    return {"storage": kind, "records": records, "users": users, "interval": interval,
            "records_per_s": records / (done - started), "checkpoints": int(completed), "failed": int(failed),
            "duration_p50_ms": int(p50), "duration_p99_ms": int(p99), "pause_p50_ms": float(pause50),
            "pause_p99_ms": float(pause99), "paused_share_pct": float(share),
            "step_share_pct": step_share, "worker_wall_s": int(wall)}


@contextlib.contextmanager
def storages(kinds: list[str], scratch: Path, latency_ms: float) -> Iterator[dict[str, StorageFactory]]:
    factories = {}
    with contextlib.ExitStack() as stack:
        server = None
        if any(k.startswith("s3") for k in kinds):
            server = stack.enter_context(running_s3_server())
        for kind in kinds:
            if kind == "file":
                factories[kind] = StorageFactory(kind, scratch, None, None)
            elif kind == "s3":
                factories[kind] = StorageFactory(kind, scratch, server.endpoint, server.bucket)
            elif kind == "s3-remote":
                proxy = TcpProxy(server.host, server.port, latency_s=latency_ms / 1000)
                stack.callback(proxy.close)
                factories[kind] = StorageFactory(kind, scratch, proxy.endpoint, server.bucket)
            else:
                raise SystemExit(f"unknown storage {kind!r}")
        yield factories


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    series = results["checkpoints"]

    ax = axes[0][0]
    labels = [f"{s['storage']}\n{s['mode']}" for s in series]
    xs = range(len(series))
    ax.bar([x - 0.2 for x in xs], [s["duration_p50_ms"] for s in series], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [s["duration_p99_ms"] for s in series], 0.4, label="p99")
    ax.axhline(200, color="grey", linestyle="--", linewidth=1, label="target p99 200 ms")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("checkpoint duration (ms)")
    ax.set_title(f"{results['config']['keys']:,} keys, {results['config']['changed']:.0%} changed per checkpoint")
    ax.legend()

    ax = axes[0][1]
    for s in series:
        if s["storage"] == series[0]["storage"]:
            ax.plot([r["uploaded_bytes"] / 1024 for r in s["rounds"]], label=s["mode"], marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("uploaded per checkpoint (KiB, log)")
    ax.set_title(f"bytes uploaded per checkpoint ({series[0]['storage']} storage)")
    ax.legend()

    ax = axes[1][0]
    sweep = results["uploaded_vs_changed"]
    changed = [s["changed_keys_per_checkpoint"] for s in sweep]
    ax.plot(changed, [s["uploaded_p50_bytes"] / 1024 for s in sweep], marker="o", label="incremental p50")
    ax.plot(changed, [s["uploaded_mean_bytes"] / 1024 for s in sweep], marker="o", label="incremental mean")
    ax.plot(changed, [s["state_bytes"] / 1024 for s in sweep], linestyle="--", label="full (state size)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"keys changed per checkpoint (of {results['config']['keys']:,})")
    ax.set_ylabel("uploaded per checkpoint (KiB)")
    ax.set_title("uploaded bytes follow changed keys, not state size")
    ax.legend()

    ax = axes[1][1]
    rec = results["recovery"]
    xs = range(len(rec))
    ax.bar([x - 0.2 for x in xs], [r["new_machine_s"] for r in rec], 0.4, label="new machine (download + verify)")
    ax.bar([x + 0.2 for x in xs], [r["same_machine_s"] for r in rec], 0.4, label="same machine (local reuse)")
    ax.axhline(2, color="grey", linestyle="--", linewidth=1, label="target 2 s")
    ax.set_xticks(list(xs), [r["storage"] for r in rec])
    ax.set_ylabel("seconds")
    ax.set_title(f"recovery of {rec[0]['keys']:,} keys ({rec[0]['state_bytes'] / 2**20:.0f} MiB)")
    ax.legend()

    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--checkpoints", type=int, default=60)
    parser.add_argument("--recovery-keys", type=int, default=1_000_000)
    parser.add_argument("--storages", default="file,s3,s3-remote")
    parser.add_argument("--remote-latency-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "checkpoints.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "bench" / "checkpoints.png")
    parser.add_argument("--quick", action="store_true", help="small sizes, results under bench/results/")
    parser.add_argument("--bootstrap", default=None, help="Kafka broker for the end-to-end runs (skipped without)")
    parser.add_argument("--e2e-records", type=int, default=1_000_000)
    parser.add_argument("--e2e-users", type=int, default=100_000)
    parser.add_argument("--e2e-reps", type=int, default=2)
    parser.add_argument("--only-e2e", action="store_true", help="skip the state-store measurements")
    parser.add_argument("--compaction-study", type=Path, default=None, metavar="JSON",
                        help="only compare leveled and universal compaction over 200 checkpoints; write JSON")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.checkpoints, args.recovery_keys = 20_000, 10, 100_000
        args.out = BENCH_DIR / "results" / "checkpoints-quick.json"
        args.plot = BENCH_DIR / "results" / "checkpoints-quick.png"
    kinds = [k.strip() for k in args.storages.split(",") if k.strip()]
    scratch = Path(tempfile.mkdtemp(prefix="eos-ckpt-bench-"))
    if args.compaction_study is not None:
        try:
            study = compaction_study(scratch, args.keys, args.changed, 200)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        args.compaction_study.parent.mkdir(parents=True, exist_ok=True)
        args.compaction_study.write_text(json.dumps({"keys": args.keys, "changed": args.changed,
                                                     "checkpoints": 200, "series": study}, indent=1))
        return
    results: dict = {"config": {"keys": args.keys, "changed": args.changed, "checkpoints": args.checkpoints,
                                "recovery_keys": args.recovery_keys, "remote_latency_ms": args.remote_latency_ms,
                                "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                            "platform": platform.platform()}},
                     "checkpoints": [], "uploaded_vs_changed": [], "recovery": [], "end_to_end": []}
    try:
        with storages(kinds, scratch, args.remote_latency_ms) as factories:
            if args.bootstrap:
                for rep in range(args.e2e_reps):
                    for kind, factory in factories.items():
                        r = end_to_end(kind, factory, args.bootstrap, args.e2e_records, args.e2e_users, "1s", scratch)
                        results["end_to_end"].append(r)
                        print(f"{kind:>9} end to end #{rep}: {r['records_per_s']:,.0f} rec/s, {r['checkpoints']} "
                              f"checkpoints p50 {r['duration_p50_ms']} ms p99 {r['duration_p99_ms']} ms, "
                              f"{r['checkpoint_share_pct']}% of the time in checkpoints {r['step_share_pct']}",
                              flush=True)
            if args.only_e2e:
                factories = {}
            for kind, factory in factories.items():
                for incremental in (True, False):
                    s = checkpoint_series(factory, scratch, keys=args.keys, changed=args.changed,
                                          checkpoints=args.checkpoints, incremental=incremental)
                    results["checkpoints"].append(s)
                    print(f"{kind:>9} {s['mode']:>11}: p50 {s['duration_p50_ms']:7.1f} ms  p99 "
                          f"{s['duration_p99_ms']:7.1f} ms  uploaded p50 {s['uploaded_p50_bytes'] / 1024:8.1f} KiB "
                          f"mean {s['uploaded_mean_bytes'] / 1024:8.1f} KiB  state {s['state_bytes'] / 1024:8.1f} KiB",
                          flush=True)
            first = next(iter(factories.values()), None)
            for fraction in (0.001, 0.003, 0.01, 0.03, 0.1) if first is not None else ():
                s = checkpoint_series(first, scratch, keys=args.keys, changed=fraction,
                                      checkpoints=max(10, args.checkpoints // 2), incremental=True)
                del s["rounds"]
                results["uploaded_vs_changed"].append(s)
                print(f"{first.kind:>9} changed {s['changed_keys_per_checkpoint']:>6}: uploaded p50 "
                      f"{s['uploaded_p50_bytes'] / 1024:8.1f} KiB mean {s['uploaded_mean_bytes'] / 1024:8.1f} KiB",
                      flush=True)
            for kind, factory in factories.items():
                r = recovery(factory, scratch, args.recovery_keys)
                results["recovery"].append(r)
                print(f"{kind:>9} recovery of {r['keys']:,} keys ({r['state_bytes'] / 2**20:.1f} MiB): new machine "
                      f"{r['new_machine_s']:.2f}s, same machine {r['same_machine_s']:.2f}s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")
    if results["checkpoints"]:
        plot(results, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
