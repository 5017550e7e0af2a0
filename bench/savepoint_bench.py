"""Savepoint of 1,000,000 keys: time to write it and to restore it.

Builds the running-sum job's state (one accumulator per user, as the `totals` operator
keeps it) in real RocksDB task stores, split over the repartition topic's partitions,
then runs the product's own code paths without a broker:

  write      each task's state into canonical JSON-lines files (write_part), the
             manifest assembled and written (what `eos savepoint stop` does once drained)
  verify     size and SHA-256 of every file (what `--from-savepoint` does before
             anything is read)
  restore    each task's RocksDB rebuilt from its partition's files
  rescale    the same savepoint restored into twice as many partitions (every file read,
             each key re-hashed with murmur2)

    .venv/bin/python bench/savepoint_bench.py --keys 1000000 --partitions 4 --dir /tmp/sp-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from service.job.loader import load_job  # noqa: E402
from service.job.planner import plan as make_plan  # noqa: E402
from service.runtime.error_policy import ErrorHandler  # noqa: E402
from service.runtime.task import CompletedCheckpoint, Task  # noqa: E402
from service.savepoints.client import assemble  # noqa: E402
from service.savepoints.part import write_part  # noqa: E402
from service.savepoints.resume import SavepointResume  # noqa: E402
from statestore.digests import DigestCache  # noqa: E402
from statestore.keys import encode_key  # noqa: E402
from statestore.murmur2 import partition_for  # noqa: E402
from statestore.savepoint_manifest import MANIFEST_NAME  # noqa: E402
from statestore.state_dir import TaskDirectory  # noqa: E402
from statestore.storage.file import FileStorage  # noqa: E402
from statestore.task_state import TaskState  # noqa: E402

GROUP = "bench"


def _tasks(plan, root: Path, partitions: int, token: str) -> list[Task]:
    stage = plan.stage_of(f"{GROUP}-by-user-repartition")
    errors = ErrorHandler("fail", {}, f"{GROUP}-dlq")
    tasks = []
    for p in range(partitions):
        tid = f"{stage.topic}-{p}"
        state = TaskState(TaskDirectory(root / "state", GROUP, tid, token), FileStorage(root / "checkpoints"),
                          GROUP, tid, DigestCache())
        task = Task(stage, p, state, errors)
        tasks.append(task)
    return tasks


def _fill(tasks: list[Task], keys: int) -> None:
    """One running-sum accumulator per user, in the partition Kafka sends the user to."""
    partitions = len(tasks)
    batches: list[list] = [[] for _ in tasks]
    for task in tasks:
        task.state.open(None)
        task.state.store.ensure_column_family("totals:acc")
    for i in range(keys):
        key = encode_key(f"user-{i}")
        value = orjson.dumps({"user": f"user-{i}", "sum": i * 7 % 100_000, "count": i % 1000 + 1, "last_id": i * 3})
        batch = batches[partition_for(key, partitions)]
        batch.append(("totals:acc", key, value))
        if len(batch) >= 50_000:
            tasks[partition_for(key, partitions)].state.store.write(batch)
            batch.clear()
    for task, batch in zip(tasks, batches):
        task.state.store.write(batch)
        task.completed = CompletedCheckpoint(7, 1000 + task.partition, None)


def _restore(plan, root: Path, location: str, partitions: int) -> tuple[float, int, float]:
    began = time.monotonic()
    resume = SavepointResume.open(location, plan, allow_non_restored_state=False, cache_dir=root / "cache")
    verified = time.monotonic() - began
    resume.partition_counts = {f"{GROUP}-by-user-repartition": partitions}
    tasks = _tasks(plan, root, partitions, uuid.uuid4().hex[:8])
    for task in tasks:
        resume.restore(task, 0)
    elapsed = time.monotonic() - began
    keys = 0
    for task in tasks:
        keys += sum(1 for _ in task.state.store.items("totals:acc"))
        task.state.close()
    return elapsed, keys, verified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/eos-savepoint-bench"))
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    root = args.dir
    plan = make_plan(load_job(REPO / "examples" / "running_sum.py", {"input": "orders", "output": "totals"}), GROUP)

    tasks = _tasks(plan, root, args.partitions, "writer")
    began = time.monotonic()
    _fill(tasks, args.keys)
    fill_s = time.monotonic() - began

    began = time.monotonic()
    location = str(root / "savepoints" / "sp-bench")
    storage = FileStorage(location)
    counts = {"orders": args.partitions, f"{GROUP}-by-user-repartition": args.partitions}
    part = write_part(plan=plan, tasks=tasks, worker="w1", storage=storage, scratch=root / "scratch",
                      partitions=counts, end_offsets={})
    orders = {"worker": "w1", "job": plan.job.name, "group": GROUP, "params": {}, **part}
    orders["positions"] += [{"stage": "orders", "topic": "orders", "partition": p, "offset": 0, "checkpoint_id": 7,
                             "end_offset": 0, "worker": "w1"} for p in range(args.partitions)]
    manifest = assemble("sp-bench", "stop", [orders])
    storage.put_atomic(MANIFEST_NAME, manifest.to_bytes())
    write_s = time.monotonic() - began
    for task in tasks:
        task.state.close()

    restore_s, restored, verify_s = _restore(plan, root, location, args.partitions)
    rescale_s, rescaled, _ = _restore(plan, root, location, args.partitions * 2)
    results = {
        "keys": args.keys, "partitions": args.partitions, "bytes": manifest.total_bytes,
        "fill_s": round(fill_s, 2), "write_s": round(write_s, 2), "verify_s": round(verify_s, 2),
        "restore_s": round(restore_s, 2), "restored_keys": restored,
        "rescale_to": args.partitions * 2, "rescale_s": round(rescale_s, 2), "rescaled_keys": rescaled,
    }
    assert restored == rescaled == args.keys, results
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
