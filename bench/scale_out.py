"""Scale-out benchmark: throughput of 1 vs 2 workers, and recovery after a worker dies.

throughput
    The benchmark workload (bench/workload.py: N records pre-produced, 4 partitions,
    keyed by user) run by 1 and by 2 `eos run` workers of the same group, interleaved
    (1, 2, 1, 2, ...). Clock: from starting the workers until the N-th output is
    committed (OutputWatcher). Reported with the workers' CPU seconds (process trees,
    psutil), their CPU utilisation (CPU seconds / elapsed; 2.0 = both cores busy) and
    the broker's CPU seconds. The job is the two-stage running sum (key_by through the
    repartition topic) unless --job says otherwise.

recovery
    Two workers run the two-stage running sum on orders keyed by order id, fed live at a
    fixed rate (id i goes to partition i % 4). After a warm-up one worker is taken away;
    its tasks (the input partitions the group assigned it just before, and the
    repartition partitions that travel with them) are watched on the committed output: a
    task has recovered when an output derived from it, for an order produced after the
    death, is committed.
    Reported per scenario: the time from the death until every task of the dead worker
    (and until the first of them) produces output again. Scenarios:

      kill            SIGKILL, not restarted (a machine lost): partitions move after the
                      session timeout; the others end its open transaction
      kill-restart    SIGKILL and restart of the same slot at once, with the default
                      (static) membership: it gets its tasks back without a rebalance
      kill-restart-dynamic
                      the same with --dynamic-membership: the restarted worker is a new
                      member, and its tasks move once the old membership timed out
      term            SIGTERM: final checkpoint, leaves the group
      term-stay       SIGTERM with --stay-in-group-on-stop: partitions wait for the
                      session timeout
      kill-nofence    as kill, with --no-fence-departed: the open transaction ends only
                      at the transaction timeout, and holds back every stage-2 task

    .venv/bin/eos kafka start --port 39492
    .venv/bin/python bench/scale_out.py --bootstrap localhost:39492 throughput --records 1000000 --reps 3
    .venv/bin/python bench/scale_out.py --bootstrap localhost:39492 recovery --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import workload  # noqa: E402
from connectors.group import member_identity  # noqa: E402
from runner import MAIN_PY, _cpu, _kill_group, _proc_cpu_total, _self_cpu, find_broker_pid  # noqa: E402

TWO_STAGE_JOB = REPO / "examples" / "running_sum.py"
PREKEYED_JOB = REPO / "examples" / "running_sum_prekeyed.py"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Cluster:
    """`eos run` workers of one group, each its own process (session)."""

    bootstrap: str
    job: Path
    input_topic: str
    output_topic: str
    workdir: Path
    group: str = field(default_factory=lambda: f"bench-scale-{uuid.uuid4().hex[:8]}")
    extra_args: list[str] = field(default_factory=list)
    log_level: str = "WARNING"
    # (worker, argv) -> the argv to start: lets a caller put a worker in a CPU cgroup
    # from its first instruction (bench/cpu_cap.py)
    launch: Callable[[str, list[str]], list[str]] | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def argv(self, worker: str) -> list[str]:
        return [MAIN_PY, "-m", "service.cli", "--log-level", self.log_level, "run", str(self.job),
                "--bootstrap-servers", self.bootstrap, "--group", self.group,
                "--state-dir", str(self.workdir / f"state-{worker}"),
                "--checkpoint-storage", f"file://{self.workdir / 'checkpoints'}",
                "--checkpoint-interval", "1s", "--worker-id", worker,
                "-p", f"input={self.input_topic}", "-p", f"output={self.output_topic}", *self.extra_args]

    def start(self, worker: str) -> subprocess.Popen:
        argv = self.argv(worker) if self.launch is None else self.launch(worker, self.argv(worker))
        logf = open(self.workdir / f"{worker}.log", "ab")
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        logf.close()
        self.procs[worker] = proc
        return proc

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.procs.values():
            try:
                total += _cpu(psutil.Process(proc.pid))["total"]
            except psutil.Error:
                pass
        return total

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _kill_group(proc)


# --------------------------------------------------------------------------- throughput


class RunFailed(RuntimeError):
    """A worker stopped, or the output fell short, before the N-th output was committed."""


def throughput_run(bootstrap: str, input_topic: str, records: int, workers: int, job: Path,
                   broker_pid: int | None, *, partitions: int = workload.PARTITIONS,
                   launch: Callable[[str, list[str]], list[str]] | None = None) -> dict:
    """One timed run of `workers` workers w0, w1, ... over the pre-produced input topic
    (`partitions` partitions); `launch` wraps each worker's command (see Cluster)."""
    output = f"bench-scale-out-{uuid.uuid4().hex[:8]}"
    workload.create_topic(bootstrap, output, partitions)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    cluster = Cluster(bootstrap, job, input_topic, output, workdir, launch=launch)
    watcher = workload.OutputWatcher(bootstrap, output)
    try:
        broker0 = _proc_cpu_total(broker_pid)
        machine0, self0 = psutil.cpu_times(), _self_cpu()
        began = time.monotonic()
        for i in range(workers):
            cluster.start(f"w{i}")
        last_cpu = [0.0]

        def alive() -> bool:
            if all(p.poll() is None for p in cluster.procs.values()):
                last_cpu[0] = cluster.cpu_s()
                return True
            return False

        # (time, outputs counted, workers' CPU s) when every worker had its tasks
        balanced: list[tuple[float, int, float]] = []
        watching = threading.Event()

        def watch_balance() -> None:
            while not watching.is_set():
                try:
                    assigned = _assignment(bootstrap, cluster.group)
                except Exception:  # noqa: BLE001 - the group may not exist yet
                    assigned = {}
                tasks = sum(len(a) for a in assigned.values())
                if len(assigned) == workers and all(assigned.values()) and tasks == expected_tasks:
                    balanced.append((time.monotonic(), watcher.count, cluster.cpu_s()))
                    return
                watching.wait(0.1)

        # The group assigns the input's partitions; a repartition stage's travel with them.
        expected_tasks = partitions
        balance = threading.Thread(target=watch_balance, daemon=True)
        balance.start()
        try:
            done = watcher.wait(records, timeout=900, alive=alive, poll=0.05)
        except (RuntimeError, TimeoutError) as exc:
            raise RunFailed(f"{exc}; the workers' logs are in {workdir}") from exc
        finally:
            watching.set()
        balance.join()
        cpu = cluster.cpu_s() or last_cpu[0]
        broker1 = _proc_cpu_total(broker_pid)
        machine1, self1 = psutil.cpu_times(), _self_cpu()
        busy = (sum(machine1) - machine1.idle - machine1.iowait) - (sum(machine0) - machine0.idle - machine0.iowait)
        elapsed = done - began
        first = (watcher.first_seen - began) if watcher.first_seen is not None else None
        return {
            "workers": workers, "elapsed_s": elapsed, "records_per_s": records / elapsed,
            # from the moment every worker held its tasks (start-up and rebalances over)
            "balanced_after_s": (balanced[0][0] - began) if balanced else None,
            "balanced_records_per_s": ((records - balanced[0][1]) / (done - balanced[0][0])
                                       if balanced and done > balanced[0][0] else None),
            "balanced_cpu_utilisation": ((cpu - balanced[0][2]) / (done - balanced[0][0])
                                         if balanced and done > balanced[0][0] else None),
            "first_output_s": first,
            "began_monotonic": began,  # to place samples taken meanwhile on the same clock
            "cpu_s": cpu, "cpu_utilisation": cpu / elapsed,
            "broker_cpu_s": (broker1 - broker0) if broker0 is not None and broker1 is not None else None,
            # the output watcher (this process) reads every output record
            "watcher_cpu_s": self1 - self0,
            # every process on the machine, in cores (2.0 = both cores of this machine busy)
            "machine_cores_busy": busy / (time.monotonic() - began),
        }
    finally:
        cluster.stop_all()
        watcher.close()
        workload.delete_topics(bootstrap, [t for t in workload.list_topics(bootstrap)
                                           if t == output or t.startswith(cluster.group)])


def throughput(args: argparse.Namespace) -> dict:
    broker_pid = find_broker_pid(args.bootstrap)
    input_topic = workload.ensure_input(args.bootstrap, args.records, args.users, log=log)
    job = Path(args.job)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(args.reps):
        for workers in (1, 2):
            time.sleep(2)
            r = throughput_run(args.bootstrap, input_topic, args.records, workers, job, broker_pid)
            runs[workers].append(r)
            log(f"rep {rep} workers {workers}: {r['records_per_s']:,.0f} rec/s "
                f"({r['balanced_records_per_s'] or 0:,.0f} once balanced at {r['balanced_after_s'] or 0:.1f}s), "
                f"{r['elapsed_s']:.2f}s "
                f"(first output {r['first_output_s']:.2f}s), "
                f"CPU {r['cpu_s']:.1f}s ({r['cpu_utilisation']:.2f} cores), broker CPU {r['broker_cpu_s']:.1f}s, "
                f"watcher CPU {r['watcher_cpu_s']:.1f}s, machine {r['machine_cores_busy']:.2f} cores busy")
    summary = {}
    for workers, rs in runs.items():
        summary[workers] = {key: statistics.median([r[key] for r in rs if r[key] is not None] or [0])
                            for key in ("records_per_s", "balanced_records_per_s", "balanced_after_s", "elapsed_s", "cpu_s", "cpu_utilisation", "broker_cpu_s",
                                        "watcher_cpu_s", "machine_cores_busy",
                                        "first_output_s")}
    summary["ratio_2_over_1"] = summary[2]["records_per_s"] / summary[1]["records_per_s"]
    if summary[1]["balanced_records_per_s"]:
        summary["balanced_ratio_2_over_1"] = summary[2]["balanced_records_per_s"] / summary[1]["balanced_records_per_s"]
    return {"records": args.records, "users": args.users, "job": str(job), "runs": runs, "summary": summary}


# --------------------------------------------------------------------------- recovery


class Feeder(threading.Thread):
    """Orders at a fixed rate, keyed by order id, order i on partition i % partitions."""

    def __init__(self, bootstrap: str, topic: str, rate: float, users: int, partitions: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.rate, self.users, self.partitions = bootstrap, topic, rate, users, partitions
        self.next_id = 0
        self.began = time.monotonic()
        self.stop = threading.Event()

    def produced_at(self, order_id: int) -> float:
        return self.began + order_id / self.rate

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "enable.idempotence": True})
        began = self.began = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - began) * self.rate)
            while self.next_id < due:
                i = self.next_id
                value = orjson.dumps({"id": i, "user": f"u{(i * 7919) % self.users}", "amount": 1 + i % 100})
                producer.produce(self.topic, value, f"order-{i}".encode(), partition=i % self.partitions)
                self.next_id += 1
            producer.poll(0)
            time.sleep(0.01)
        producer.flush(30)


class OutputLog(threading.Thread):
    """Arrival time of every committed output: (monotonic, last_id, user)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-out-{uuid.uuid4().hex}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 20})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.arrivals: list[tuple[float, int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(10_000, 0.05):
                if msg.error() is None:
                    value = orjson.loads(msg.value())
                    self.arrivals.append((time.monotonic(), value["last_id"], value["user"]))
        self.consumer.close()


def _user_partitions(bootstrap: str, repartition_topic: str) -> dict[str, int]:
    """Which repartition partition each user's records go to, read off the topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-map-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                         "enable.partition.eof": True})
    parts = set(consumer.list_topics(repartition_topic, timeout=10).topics[repartition_topic].partitions)
    consumer.assign([TopicPartition(repartition_topic, p, OFFSET_BEGINNING) for p in parts])
    mapping: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while parts and time.monotonic() < deadline:
        for msg in consumer.consume(10_000, 0.2):
            if msg.error() is None:
                if msg.key():
                    mapping[json.loads(msg.key())] = msg.partition()
            else:
                parts.discard(msg.partition())
    consumer.close()
    return mapping


def _assignment(bootstrap: str, group: str) -> dict[str, list[tuple[str, int]]]:
    """Each worker's partitions, by worker id (a static member's instance id, or read from
    a dynamic member's client id)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(10)
    found = {}
    for m in description.members:
        identity = member_identity(group, m.group_instance_id, m.client_id)
        if identity is not None:
            found[identity[0]] = [(tp.topic, tp.partition) for tp in m.assignment.topic_partitions]
    return found


def _owned_by(bootstrap: str, group: str, worker: str, timeout_s: float = 60.0) -> list[tuple[str, int]]:
    """The worker's partitions, once the group has given it some."""
    deadline = time.monotonic() + timeout_s
    while True:
        owned = _assignment(bootstrap, group).get(worker)
        if owned or time.monotonic() > deadline:
            return owned or []
        time.sleep(0.5)


SCENARIOS = ("kill", "kill-restart", "kill-restart-dynamic", "term", "term-stay", "kill-nofence")


def recovery_run(args: argparse.Namespace, scenario: str) -> dict:
    input_topic = f"bench-orders-{uuid.uuid4().hex[:8]}"
    output = f"bench-totals-{uuid.uuid4().hex[:8]}"
    workload.create_topic(args.bootstrap, input_topic)
    workload.create_topic(args.bootstrap, output)
    workdir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    extra = {"kill-nofence": ["--no-fence-departed"], "term-stay": ["--stay-in-group-on-stop"],
             "kill-restart-dynamic": ["--dynamic-membership"]}.get(scenario, [])
    cluster = Cluster(args.bootstrap, TWO_STAGE_JOB, input_topic, output, workdir, extra_args=extra, log_level="INFO")
    feeder = Feeder(args.bootstrap, input_topic, args.rate, args.users, workload.PARTITIONS)
    outputs = OutputLog(args.bootstrap, output)
    try:
        outputs.start()
        feeder.start()
        cluster.start("a")
        cluster.start("b")
        time.sleep(args.warmup)
        repartition = f"{cluster.group}-by-user-repartition"
        users = _user_partitions(args.bootstrap, repartition)
        # The group assigns input partitions; repartition partition p travels with input partition p.
        owned = [(topic, partition) for _, partition in _owned_by(args.bootstrap, cluster.group, "a")
                 for topic in (input_topic, repartition)]
        victim = cluster.procs["a"]
        signalled_at = time.monotonic()
        if scenario.startswith("kill"):
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            if scenario.startswith("kill-restart"):
                cluster.start("a")
        else:
            victim.send_signal(signal.SIGTERM)
            victim.wait(60)
        # A stopping worker commits what it processed until it exits: its death is the exit.
        died_at = time.monotonic() if scenario.startswith("term") else signalled_at
        first_id_after = feeder.next_id
        time.sleep(args.observe)
        feeder.stop.set()
        outputs.stop.set()
        outputs.join(10)

        def recovered_after(belongs) -> float | None:
            times = [t for t, last_id, user in outputs.arrivals
                     if t > died_at and last_id >= first_id_after and belongs(last_id, user)]
            return (min(times) - died_at) if times else None

        per_task = {}
        for topic, partition in owned:
            if topic == input_topic:
                per_task[f"input-{partition}"] = recovered_after(lambda i, u, p=partition: i % workload.PARTITIONS == p)
            else:
                per_task[f"repartition-{partition}"] = recovered_after(lambda i, u, p=partition: users.get(u) == p)
        before = [t - feeder.produced_at(i) for t, i, _ in outputs.arrivals if died_at - 5 < t < died_at]
        times = [t for t, _, _ in outputs.arrivals]
        gaps = sorted(b - a for a, b in zip(times, times[1:]) if a >= died_at - 1)
        known = [v for v in per_task.values() if v is not None]
        return {
            "scenario": scenario, "tasks": per_task, "stop_took_s": died_at - signalled_at,
            "all_tasks_s": max(known) if len(known) == len(per_task) and known else None,
            "first_task_s": min(known) if known else None,
            "longest_output_gap_s": gaps[-1] if gaps else None,
            # end-to-end latency (produced -> committed output) over the 5 s before the death
            "latency_before_p50_s": statistics.median(before) if before else None,
            "latency_before_max_s": max(before) if before else None,
        }
    finally:
        feeder.stop.set()
        outputs.stop.set()
        cluster.stop_all()
        workload.delete_topics(args.bootstrap, [t for t in workload.list_topics(args.bootstrap)
                                                if t in (input_topic, output) or t.startswith(cluster.group)])


def recovery(args: argparse.Namespace) -> dict:
    scenarios = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    runs: dict[str, list[dict]] = {s: [] for s in scenarios}
    for rep in range(args.reps):
        for scenario in scenarios:
            r = recovery_run(args, scenario)
            runs[scenario].append(r)
            log(f"rep {rep} {scenario}: all tasks {r['all_tasks_s']}, first {r['first_task_s']}, "
                f"longest output gap {r['longest_output_gap_s']}; per task {r['tasks']}")
    summary = {}
    for scenario, rs in runs.items():
        values = [r["all_tasks_s"] for r in rs if r["all_tasks_s"] is not None]
        latencies = [r["latency_before_p50_s"] for r in rs if r["latency_before_p50_s"] is not None]
        summary[scenario] = {"all_tasks_s_median": statistics.median(values) if values else None,
                             "first_task_s_median": statistics.median(
                                 [r["first_task_s"] for r in rs if r["first_task_s"] is not None] or [0]),
                             "steady_latency_p50_s": statistics.median(latencies) if latencies else None,
                             "all_tasks_s_max": max(values) if values else None,
                             "runs_without_full_recovery": len(rs) - len(values)}
    return {"rate": args.rate, "warmup_s": args.warmup, "observe_s": args.observe, "runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="localhost:39492")
    parser.add_argument("--out", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--records", type=int, default=1_000_000)
    t.add_argument("--users", type=int, default=10_000)
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--job", default=str(TWO_STAGE_JOB))
    r = sub.add_parser("recovery")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--rate", type=float, default=2000.0, help="orders per second")
    r.add_argument("--users", type=int, default=1000)
    r.add_argument("--warmup", type=float, default=12.0)
    r.add_argument("--observe", type=float, default=45.0, help="seconds watched after the death")
    r.add_argument("--scenarios", default=None, help=f"comma list of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    result = throughput(args) if args.command == "throughput" else recovery(args)
    result["meta"] = {"command": args.command, "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out) if args.out else BENCH_DIR / "results" / f"scale-out-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["summary"], indent=2, default=str))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
