"""End-to-end latency of exactly-once output, against the checkpoint (commit) interval.

An exactly-once output becomes visible to a `read_committed` reader only when the
transaction that holds it commits, so latency is bounded below by the commit interval.
Here the one-stage running sum (input keyed by user) runs at half of its maximum
throughput while orders are produced at a steady rate into a topic that stamps each
record with the broker's append time (`message.timestamp.type=LogAppendTime`); a
`read_committed` reader of the output notes when each output arrives, on the same clock.
Latency of an order = when its output was read - when its input was appended. Reported
per interval (100 ms, 250 ms, 1 s): p50, p99 and max over the steady part of the run,
for eos (a snapshot with every checkpoint, the default), eos with a changelog (state
changes logged in each checkpoint's transaction, a snapshot every
runner.CHANGELOG_SNAPSHOT_INTERVAL) and
Quix Streams at the same commit interval; and the maximum throughput of both eos modes
at 100 ms against the default at 1 s.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import async_snapshot_bench
import runner
import workload
from runner import MAIN_PY, REPO

INTERVALS_S = (0.1, 0.25, 1.0)
# Latency against load at the shortest interval: these fractions of the maximum
# throughput at 1 s, beside the half the main runs use.
SWEEP_FRACTIONS = (0.1, 0.25, 0.4)
SWEEP_INTERVAL_S = 0.1
# The target: p99 within the checkpoint interval plus this.
TARGET_MARGIN_MS = 100.0
WARMUP_S = 5.0
# A store that answers each request 20 ms later, as a remote object store does.
REMOTE_LATENCY_MS = 20.0
REMOTE_INTERVAL_S = 0.1


def _eos_command(ctx_bootstrap: str, group: str, workdir, input_topic: str, output_topic: str,
                 interval_s: float) -> list[str]:
    return [MAIN_PY, "-m", "service.cli", "--log-level", "WARNING", "run",
            str(REPO / "examples" / "running_sum_prekeyed.py"), "--bootstrap-servers", ctx_bootstrap,
            "--group", group, "--state-dir", str(workdir / "eos-state"),
            "--checkpoint-storage", f"file://{workdir / 'eos-checkpoints'}",
            "--checkpoint-interval", f"{int(interval_s * 1000)}ms", "--worker-id", "bench",
            "-p", f"input={input_topic}", "-p", f"output={output_topic}"]


def _quix_command(bootstrap: str, group: str, workdir, input_topic: str, output_topic: str,
                  interval_s: float) -> list[str]:
    return [runner.QUIX_PY, str(runner.BENCH_DIR / "quix_running_sum.py"), "--bootstrap", bootstrap,
            "--input", input_topic, "--output", output_topic, "--group", group,
            "--commit-interval", str(interval_s), "--state-dir", str(workdir / "quix-state")]


def _eos_changelog_command(*args) -> list[str]:
    return [*_eos_command(*args), "--snapshot-interval", runner.CHANGELOG_SNAPSHOT_INTERVAL]


CANDIDATES = {"eos": _eos_command, "eos-changelog": _eos_changelog_command, "quix": _quix_command}
# The same modes in runner.py's throughput runs.
THROUGHPUT_CANDIDATES = {"eos": "eos-exactly-once-prekeyed", "eos-changelog": "eos-exactly-once-prekeyed-changelog"}


def _create_input(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics([NewTopic(topic, workload.PARTITIONS, 1,
                                           config={"message.timestamp.type": "LogAppendTime"})])[topic]
    future.result(30)


class Feed:
    """Orders at `rate` per second, keyed by user, for `seconds`: in a process of its own,
    so that producing does not hold the interpreter lock the reader needs to see outputs
    on time. The orders are encoded before the clock starts (`ready`), so that the 2
    cores the worker shares with the feed are not spent making up input: in a
    deployment the producers run elsewhere."""

    def __init__(self, bootstrap: str, topic: str, rate: float, users: int, seconds: float) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with Kafka clients
        self.ready, self.go, self.stopped = context.Event(), context.Event(), context.Event()
        self._sent = context.Value("q", 0)
        orders = int(rate * seconds) + 1
        self._process = context.Process(target=_feed, daemon=True,
                                        args=(bootstrap, topic, rate, users, orders, self.ready, self.go, self.stopped,
                                              self._sent))

    def prepare(self) -> None:
        """Starts the process, which encodes the orders and waits for `start`."""
        self._process.start()

    def start(self) -> None:
        if not self.ready.wait(300):
            raise RuntimeError("the feed did not prepare its orders within 300s")
        self.go.set()

    def join(self, timeout: float) -> None:
        self._process.join(timeout)

    @property
    def sent(self) -> int:
        return self._sent.value


def _feed(bootstrap: str, topic: str, rate: float, users: int, orders: int, ready, go, stopped, sent) -> None:
    records = list(workload.generate(orders, users))
    # librdkafka's default linger: a batch per partition every 5 ms, as a producer left
    # at its defaults sends them.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random",
                         "enable.idempotence": True})
    ready.set()
    go.wait()
    began, count = time.monotonic(), 0
    while not stopped.is_set() and count < orders:
        due = min(orders, int((time.monotonic() - began) * rate))
        while count < due:
            key, value = records[count]
            try:
                producer.produce(topic, value, key)
            except BufferError:
                producer.poll(0.01)
                continue
            count += 1
        sent.value = count
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(30)
    sent.value = count


class Reader(threading.Thread):
    """Notes when each output (by its order id) is first read, read_committed, and the
    output's own timestamp: for eos, when the worker produced it."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"latency-{uuid.uuid4().hex[:8]}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(workload.PARTITIONS)])
        self.seen: dict[int, float] = {}
        self.produced: dict[int, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        consumer = self.consumer
        while not self.stopped.is_set():
            # What is there now, else the first to arrive: librdkafka's batch call would
            # wait out its timeout for the batch to fill, and add that to every latency.
            msgs = consumer.consume(10_000, 0) or consumer.consume(1, 0.05)
            now = time.time()  # when they became readable, not when each was parsed
            for msg in msgs:
                if msg.error() is None:
                    order = orjson.loads(msg.value())["last_id"]
                    if order not in self.seen:
                        self.seen[order] = now
                        self.produced[order] = msg.timestamp()[1] / 1000
        self.consumer.close()


def _appended(bootstrap: str, topic: str) -> dict[int, float]:
    """Order id -> broker append time (s), read back from the input topic."""
    appended: dict[int, float] = {}

    def take(msgs: list) -> None:
        for msg in msgs:
            appended[orjson.loads(msg.value())["id"]] = msg.timestamp()[1] / 1000

    workload.consume_all(bootstrap, topic, take)
    return appended


def latency_run(bootstrap: str, candidate: str, interval_s: float, rate: float, seconds: float, users: int,
                log, storage: tuple[list[str], dict[str, str]] | None = None) -> dict:
    """One candidate at one interval. `storage`: eos's checkpoint storage arguments and
    environment instead of a local directory."""
    run_id = uuid.uuid4().hex[:8]
    input_topic, output_topic = f"bench-lat-in-{run_id}", f"bench-lat-out-{run_id}"
    _create_input(bootstrap, input_topic)
    workload.create_topic(bootstrap, output_topic)
    workdir = runner.Path(runner.tempfile.mkdtemp(prefix=f"bench-lat-{candidate}-"))
    argv = CANDIDATES[candidate](bootstrap, f"bench-lat-{candidate}-{run_id}", workdir, input_topic, output_topic,
                                 interval_s)
    env = None
    if storage is not None:
        at = argv.index("--checkpoint-storage")
        argv = [*argv[:at], *storage[0], *argv[at + 2:]]
        env = {**runner.os.environ, **storage[1]}
    reader = Reader(bootstrap, output_topic)
    reader.start()
    with open(workdir / "candidate.log", "wb") as out:
        proc = runner.subprocess.Popen(argv, stdout=out, stderr=runner.subprocess.STDOUT, cwd=str(REPO),
                                       start_new_session=True, env=env)
    feed = Feed(bootstrap, input_topic, rate, users, seconds)
    feed.prepare()
    try:
        time.sleep(3.0)  # the candidate joins its group before the feed starts
        feed.start()
        time.sleep(seconds)
        feed.stopped.set()
        feed.join(30)
        deadline = time.monotonic() + 30
        while len(reader.seen) < feed.sent and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        reader.stopped.set()
        reader.join(10)
        runner._kill_group(proc)
    appended = _appended(bootstrap, input_topic)
    start = min(appended.values()) + WARMUP_S
    steady = [(i, t) for i, t in appended.items() if t >= start and i in reader.seen]
    latencies = sorted(reader.seen[i] - t for i, t in steady)
    # An eos output's timestamp is when the worker produced it (the job keeps no event
    # time): the latency splits into processing (input appended -> output produced) and
    # the commit (produced -> readable). Quix gives outputs its inputs' timestamps.
    split = {"processing": sorted(reader.produced[i] - t for i, t in steady),
             "commit": sorted(reader.seen[i] - reader.produced[i] for i, _ in steady)} \
        if candidate.startswith("eos") else {}
    missing = sum(1 for i in appended if i not in reader.seen)
    workload.delete_topics(bootstrap, [input_topic, output_topic])
    runner.shutil.rmtree(workdir, ignore_errors=True)
    if not latencies:
        log(f"  {candidate} @ {interval_s * 1000:.0f} ms: no output (see its log)")
        return {"candidate": candidate, "interval_s": interval_s, "ok": False}

    def pct(q: float, values: list[float] = latencies) -> float:
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]

    result = {"candidate": candidate, "interval_s": interval_s, "rate": rate, "ok": missing == 0,
              "storage": "s3-remote" if storage is not None else "file",
              "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": 1000 * latencies[-1], "records": len(latencies),
              "missing": missing,
              **{f"{part}_{name}_ms": pct(q, values) for part, values in split.items()
                 for name, q in (("p50", 0.5), ("p99", 0.99))}}
    where = " (S3)" if storage is not None else ""
    log(f"  {candidate}{where} @ {interval_s * 1000:.0f} ms: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms ({len(latencies):,} orders at {rate:,.0f}/s, {missing} missing)"
        + "".join(f"; {part} p50 {result[f'{part}_p50_ms']:.0f} / p99 {result[f'{part}_p99_ms']:.0f} ms"
                  for part in split))
    return result


def max_throughput(bootstrap: str, configs: list[tuple[str, float]], records: int, users: int, reps: int,
                   log) -> dict[str, float | None]:
    """The prekeyed running sum's throughput per (eos mode, checkpoint interval), median
    of `reps`; the configurations take turns within each rep, so drift of this shared
    machine reaches them alike."""
    topic = workload.ensure_input(bootstrap, records, users, log=log)
    logdir = runner.Path(runner.tempfile.mkdtemp(prefix="bench-lat-tput-"))
    rates: dict[str, list[float]] = {f"{c}@{i}": [] for c, i in configs}
    for rep in range(reps):
        for candidate, interval_s in configs:
            r = runner.run_once(runner.REGISTRY[THROUGHPUT_CANDIDATES[candidate]], bootstrap=bootstrap,
                                input_topic=topic, records=records, users=users, rep=rep,
                                commit_interval=interval_s, timeout=900.0, verify=False, keep_topics=False,
                                logdir=logdir, broker_pid=runner.find_broker_pid(bootstrap), log=log)
            if r.get("ok"):
                rates[f"{candidate}@{interval_s}"].append(r["records_per_s"])
                log(f"  {candidate} throughput @ {interval_s * 1000:.0f} ms, rep {rep}: "
                    f"{r['records_per_s']:,.0f} records/s")
    return {key: sorted(found)[len(found) // 2] if found else None for key, found in rates.items()}


def latency(bootstrap: str, records: int, users: int, seconds: float, reps: int, log) -> dict:
    runner.ensure_quix_venv(log)
    log("latency: maximum throughput at 1 s and 100 ms checkpoint intervals, each eos mode")
    tput = max_throughput(bootstrap, [(c, i) for i in (1.0, 0.1) for c in THROUGHPUT_CANDIDATES], records, users,
                          reps, log)
    rate = (tput["eos@1.0"] or 20_000) / 2
    log(f"latency: orders at {rate:,.0f}/s (half the maximum at 1 s), {seconds:.0f} s per run")
    runs = [latency_run(bootstrap, candidate, interval, rate, seconds, users, log)
            for interval in INTERVALS_S for candidate in CANDIDATES]
    remote_rate = rate / 2  # a quarter of the maximum: the worker has room for checkpoints' work
    log(f"latency: checkpoints to S3 with {REMOTE_LATENCY_MS:.0f} ms added per request, {REMOTE_INTERVAL_S * 1000:.0f} ms "
        f"checkpoint interval, orders at {remote_rate:,.0f}/s")
    with async_snapshot_bench.storage("s3-remote", runner.Path(runner.tempfile.mkdtemp(prefix="bench-lat-s3-")),
                                      REMOTE_LATENCY_MS) as remote:
        runs += [latency_run(bootstrap, candidate, REMOTE_INTERVAL_S, remote_rate, seconds, users, log, storage=remote)
                 for candidate in THROUGHPUT_CANDIDATES]
    log(f"latency against load: {', '.join(f'{f:.0%}' for f in SWEEP_FRACTIONS)} of the maximum, "
        f"{SWEEP_INTERVAL_S * 1000:.0f} ms checkpoint interval")
    sweep = [latency_run(bootstrap, candidate, SWEEP_INTERVAL_S, 2 * rate * fraction, seconds, users, log)
             for fraction in SWEEP_FRACTIONS for candidate in THROUGHPUT_CANDIDATES]
    baseline = tput["eos@1.0"]
    return {"rate": rate, "seconds": seconds, "users": users, "max_throughput": tput,
            "sweep": sweep,
            "snapshot_interval": runner.CHANGELOG_SNAPSHOT_INTERVAL,
            # each mode at 100 ms against the default (a snapshot with every checkpoint) at 1 s
            "throughput_100ms_vs_1s": {c: tput[f"{c}@0.1"] / baseline if tput[f"{c}@0.1"] and baseline else None
                                       for c in THROUGHPUT_CANDIDATES},
            "runs": runs}


def plot(result: dict, path: runner.Path) -> None:
    """Left: p50 and p99 per checkpoint interval at half the maximum, each candidate that
    kept up, against the target. Right: eos's p99 against load at 100 ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_interval, by_load) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"eos": "#4878a8", "eos-changelog": "#d8742c", "quix": "#6a9f58"}
    local = [r for r in result["runs"] if r.get("ok") and r.get("storage") == "file"]
    intervals = sorted({r["interval_s"] for r in local})
    for candidate, color in colors.items():
        runs = {r["interval_s"]: r for r in local if r["candidate"] == candidate}
        known = [i for i in intervals if i in runs]
        if not known:
            continue
        ms = [1000 * i for i in known]
        by_interval.plot(ms, [runs[i]["p99_ms"] for i in known], "o-", color=color, label=f"{candidate} p99")
        by_interval.plot(ms, [runs[i]["p50_ms"] for i in known], "s:", color=color, label=f"{candidate} p50")
    target = [1000 * i + TARGET_MARGIN_MS for i in intervals]
    by_interval.plot([1000 * i for i in intervals], target, "r--", label="target (interval + 100 ms)")
    by_interval.set_xscale("log"), by_interval.set_xticks([1000 * i for i in intervals])
    by_interval.set_xticklabels([f"{1000 * i:.0f}" for i in intervals])
    by_interval.set_xlabel("checkpoint interval, ms"), by_interval.set_ylabel("latency, ms")
    by_interval.set_title(f"at {result['rate']:,.0f} orders/s (half the maximum)", fontsize=9)
    sweep = [*result.get("sweep", []),
             *(r for r in local if r["interval_s"] == SWEEP_INTERVAL_S and r["candidate"] in THROUGHPUT_CANDIDATES)]
    for candidate in THROUGHPUT_CANDIDATES:
        runs = sorted((r for r in sweep if r.get("ok") and r["candidate"] == candidate), key=lambda r: r["rate"])
        if runs:
            rates = [r["rate"] / 1000 for r in runs]
            by_load.plot(rates, [r["p99_ms"] for r in runs], "o-", color=colors[candidate], label=f"{candidate} p99")
            by_load.plot(rates, [r["p50_ms"] for r in runs], "s:", color=colors[candidate], label=f"{candidate} p50")
    by_load.axhline(1000 * SWEEP_INTERVAL_S + TARGET_MARGIN_MS, color="r", linestyle="--", label="target")
    by_load.set_yscale("log"), by_load.set_xlabel("thousand orders / s"), by_load.set_ylabel("latency, ms")
    by_load.set_title(f"against load, checkpoints every {1000 * SWEEP_INTERVAL_S:.0f} ms", fontsize=9)
    for ax in (by_interval, by_load):
        ax.legend(fontsize=7)
    fig.suptitle("End-to-end exactly-once latency: input appended to output readable (read_committed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
