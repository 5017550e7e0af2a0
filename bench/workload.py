"""Benchmark workload: topics, input pre-production, output watching and verification.

Workload contract (shared by every candidate):

* input topic, 4 partitions (more where a benchmark asks), N records produced *before*
  timing starts;
  value ``{"id": int, "user": "u<k>", "amount": int}`` (orjson, compact),
  ids ``0..N-1`` unique, key = the user string (UTF-8), partitioner
  ``murmur2_random`` (Java-client compatible murmur2 for non-empty keys);
* output: exactly one record per input record, key = user, value
  ``{"user", "sum", "count", "last_id"}`` = the user's running totals
  including that record.

Only needs ``confluent-kafka`` and ``orjson``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

PARTITIONS = 4
DEFAULT_SEED = 42
MAX_AMOUNT = 1000


# --------------------------------------------------------------------------- topics


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def topic_exists(bootstrap: str, topic: str) -> bool:
    md = admin(bootstrap).list_topics(timeout=10)
    return topic in md.topics


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS, *, replace: bool = False, timeout: float = 30.0) -> None:
    """Create ``topic``; with ``replace`` delete an existing one first (waits until gone)."""
    adm = admin(bootstrap)
    if replace:
        delete_topics(bootstrap, [topic], timeout=timeout)
    fut = adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)], operation_timeout=timeout)[topic]
    try:
        fut.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    _wait_until(lambda: _partition_count(adm, topic) == partitions, timeout, f"topic {topic} to appear")


def delete_topics(bootstrap: str, topics: list[str], timeout: float = 30.0) -> None:
    """Delete the topics that exist and wait until the metadata no longer lists them."""
    adm = admin(bootstrap)
    existing = [t for t in topics if t in adm.list_topics(timeout=10).topics]
    if not existing:
        return
    for t, fut in adm.delete_topics(existing, operation_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    _wait_until(lambda: not set(existing) & set(adm.list_topics(timeout=10).topics), timeout, f"deletion of {existing}")


def list_topics(bootstrap: str) -> list[str]:
    return sorted(admin(bootstrap).list_topics(timeout=10).topics)


def _partition_count(adm: AdminClient, topic: str) -> int:
    t = adm.list_topics(topic=topic, timeout=10).topics.get(topic)
    if t is None or t.error is not None:
        return -1
    return len(t.partitions)


def _wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} -- offsets, *not* record counts when transactions are involved."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-wm-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in md.partitions}
    finally:
        c.close()


# --------------------------------------------------------------------------- input


def input_topic_name(records: int, users: int, seed: int = DEFAULT_SEED, partitions: int = PARTITIONS) -> str:
    """The name says what is in the topic, so a complete one is reused across runs."""
    suffix = "" if partitions == PARTITIONS else f"-p{partitions}"
    return f"bench-in-r{records}-u{users}-s{seed}{suffix}"


def generate(records: int, users: int, seed: int = DEFAULT_SEED):
    """Yield ``(key_bytes, value_bytes)`` deterministically; id i is the i-th record."""
    rng = random.Random(seed)
    rand = rng.randrange
    user_names = [f"u{k}" for k in range(users)]
    user_keys = [u.encode() for u in user_names]
    dumps = orjson.dumps
    for i in range(records):
        k = rand(users)
        yield user_keys[k], dumps({"id": i, "user": user_names[k], "amount": rand(1, MAX_AMOUNT + 1)})


def produce_input(bootstrap: str, topic: str, records: int, users: int, seed: int = DEFAULT_SEED) -> float:
    """Produce the whole input as fast as possible (batched, no per-record callbacks).

    Returns the seconds taken. Idempotent producer, so no duplicates on retries.
    """
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",
        }
    )
    produce, poll = p.produce, p.poll
    t0 = time.monotonic()
    n = 0
    for key, value in generate(records, users, seed):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        n += 1
        if not n & 0x3FFF:
            poll(0)
    remaining = p.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} input records not delivered")
    return time.monotonic() - t0


def count_records(bootstrap: str, topic: str, timeout: float = 120.0) -> int:
    """Read the topic from the start (read_committed) and count the data records."""
    return consume_all(bootstrap, topic, lambda msgs: None, timeout=timeout)


def ensure_input(bootstrap: str, records: int, users: int, seed: int = DEFAULT_SEED, log=print,
                 partitions: int = PARTITIONS) -> str:
    """Create and fill the input topic for (records, users, seed, partitions) unless a complete
    one exists.

    The input producer is non-transactional, so the offset span equals the record count.
    """
    topic = input_topic_name(records, users, seed, partitions)
    if topic_exists(bootstrap, topic):
        wm = watermarks(bootstrap, topic)
        if len(wm) == partitions and sum(h - lo for lo, h in wm.values()) == records and all(lo == 0 for lo, _ in wm.values()):
            log(f"reusing input topic {topic} ({records} records)")
            return topic
        log(f"input topic {topic} incomplete, recreating")
    create_topic(bootstrap, topic, partitions, replace=True)
    secs = produce_input(bootstrap, topic, records, users, seed)
    log(f"produced {records} records to {topic} in {secs:.1f}s ({records / secs:,.0f}/s)")
    return topic


# --------------------------------------------------------------------------- output


def _assigned_consumer(bootstrap: str, topic: str, **extra) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-watch-{uuid.uuid4().hex}",  # never joins/commits: partitions are assigned manually
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 50,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "queued.min.messages": 200_000,
        "fetch.queue.backoff.ms": 10,  # default 1000 ms: a full local queue would stall the count
    }
    conf.update(extra)
    c = Consumer(conf)
    md = c.list_topics(topic, timeout=10).topics[topic]
    if md.error is not None:
        c.close()
        raise KafkaException(md.error)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
    return c


def _raise_on_error(msgs) -> None:
    for m in msgs:
        err = m.error()
        if err is not None and err.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(err)


def consume_all(bootstrap: str, topic: str, on_batch, timeout: float = 120.0) -> int:
    """Consume the committed contents of ``topic`` (read_committed) and hand batches to ``on_batch``.

    Stops once every partition reported EOF, i.e. its position reached the last stable
    offset (the committed end; transaction markers and aborted data are skipped).
    """
    c = _assigned_consumer(bootstrap, topic, **{"enable.partition.eof": True})
    try:
        n = 0
        eof: set[int] = set()
        parts = {tp.partition for tp in c.assignment()}
        deadline = time.monotonic() + timeout
        while eof != parts:
            msgs = c.consume(num_messages=100_000, timeout=0.2)
            data = []
            for m in msgs:  # in order: an EOF follows the partition's data
                err = m.error()
                if err is None:
                    data.append(m)
                    eof.discard(m.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                else:
                    raise KafkaException(err)
            if data:
                on_batch(data)
                n += len(data)
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {n} records after {timeout}s")
        return n
    finally:
        c.close()


class OutputWatcher:
    """Counts records on an output topic as a ``read_committed`` consumer sees them.

    Create it (which assigns the consumer and starts the LSO sampler) *before* the
    candidate starts, then call ``wait``.

    Counting: only committed data records are delivered to a read_committed consumer
    (transaction markers and aborted records are skipped), so ``count`` is a true
    committed-record count.

    Timing: materialising records in Python costs ~1 us each, so the moment the watcher
    *counts* the N-th record lags the moment it became committed by up to the time needed
    to read the last transaction's records. A background thread therefore samples the
    partitions' last stable offsets (ListOffsets, read_committed) every ``lso_interval``
    seconds; ``committed_at`` is the earliest sample (response time, i.e. conservative)
    in which every partition's LSO had passed the last counted record of that partition.
    It is never later than ``counted_at``.
    """

    def __init__(self, bootstrap: str, topic: str, lso_interval: float = 0.02):
        self.bootstrap = bootstrap
        self.topic = topic
        self.count = 0
        self.first_seen: float | None = None  # time.monotonic() of the first committed output (LSO or count)
        self.counted_at: float | None = None  # ... when the count reached the target
        self.committed_at: float | None = None  # ... when the broker exposed the target as committed (LSO)
        self.last_offsets: dict[int, int] = {}  # partition -> offset of the last counted record
        self._consumer = _assigned_consumer(bootstrap, topic)
        self._partitions = sorted(tp.partition for tp in self._consumer.assignment())
        self._samples: list[tuple[float, dict[int, int]]] = []  # (monotonic, {partition: LSO}) on change
        self._lso_interval = lso_interval
        self._admin = admin(bootstrap)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if lso_interval > 0:
            self._thread = threading.Thread(target=self._sample_lso, name=f"lso-{topic}", daemon=True)
            self._thread.start()

    # -- LSO sampling

    def _query_lso(self) -> dict[int, int]:
        req = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in self._partitions}
        futs = self._admin.list_offsets(req, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
        return {tp.partition: f.result().offset for tp, f in futs.items()}

    def _sample_lso(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                lso = self._query_lso()
                t = time.monotonic()
                if lso != last:
                    self._samples.append((t, lso))
                    last = lso
            except KafkaException:
                pass
            self._stop.wait(self._lso_interval)

    def _lso_time(self) -> float | None:
        target = self.last_offsets
        for t, lso in list(self._samples):
            if all(lso.get(p, -1) > off for p, off in target.items()):
                return t
        return None

    # -- counting

    def wait(self, expected: int, timeout: float, alive=lambda: True, poll: float = 0.1) -> float:
        """Block until ``expected`` committed records were counted; return ``committed_at``.

        ``alive()`` is called after empty polls; once it returns False the wait fails.
        """
        c = self._consumer
        deadline = time.monotonic() + timeout
        consume = c.consume
        nparts = len(self._partitions)
        last = self.last_offsets
        while self.count < expected:
            msgs = consume(num_messages=10_000, timeout=poll)  # small calls: let the LSO thread get the GIL
            now = time.monotonic()
            if msgs:
                seen: set[int] = set()
                for m in reversed(msgs):  # last offset per partition: usually a few steps
                    if m.error() is not None:
                        _raise_on_error(msgs)
                        continue
                    p = m.partition()
                    if p not in seen:
                        seen.add(p)
                        last[p] = max(last.get(p, -1), m.offset())
                        if len(seen) == nparts:
                            break
                self.count += len(msgs)
                if self.first_seen is None:
                    self.first_seen = now
                if self.count >= expected:
                    self.counted_at = now
                    break
            if now > deadline:
                raise TimeoutError(f"{self.topic}: saw {self.count}/{expected} committed records in {timeout}s")
            if not msgs and not alive():
                raise RuntimeError(f"{self.topic}: candidate exited after {self.count}/{expected} committed records")
        t = self._lso_time() if self._thread is not None else None
        self.committed_at = min(t, self.counted_at) if t is not None else self.counted_at
        first = next((t for t, lso in list(self._samples) if any(v > 0 for v in lso.values())), None)
        if first is not None and self.first_seen is not None:
            self.first_seen = min(first, self.first_seen)
        return self.committed_at

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def wait_for_output(bootstrap: str, topic: str, expected: int, timeout: float = 600.0) -> float:
    """Wait until a read_committed consumer has seen ``expected`` records on ``topic``.

    Returns the wall-clock time (time.time()) when the last one was seen.
    """
    w = OutputWatcher(bootstrap, topic)
    try:
        mono = w.wait(expected, timeout)  # committed_at (LSO-based), never after counted_at
        return time.time() - (time.monotonic() - mono)
    finally:
        w.close()


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyResult:
    ok: bool
    input_records: int
    output_records: int
    users: int
    problems: list[str]

    def as_dict(self) -> dict:
        return {"ok": self.ok, "input_records": self.input_records, "output_records": self.output_records, "users": self.users, "problems": self.problems}


def verify_output(bootstrap: str, input_topic: str, output_topic: str, max_problems: int = 20) -> VerifyResult:
    """Check the committed output against the input.

    For every user, the committed outputs (in partition order) must have counts 1..n without
    gaps or repeats, sum = prefix sum of the user's amounts in input order, last_id = the id
    of the count-th input record of that user, and n = the number of input records of that user.
    """
    per_user_in: dict[str, list[tuple[int, int]]] = defaultdict(list)  # user -> [(id, amount)] in input order

    def take_input(msgs):
        loads = orjson.loads
        for m in msgs:
            v = loads(m.value())
            if m.key() != v["user"].encode():
                raise AssertionError(f"input key {m.key()!r} != user {v['user']!r}")
            per_user_in[v["user"]].append((v["id"], v["amount"]))

    n_in = consume_all(bootstrap, input_topic, take_input)

    problems: list[str] = []
    seen_count: dict[str, int] = defaultdict(int)
    running: dict[str, int] = defaultdict(int)

    def problem(msg: str) -> None:
        if len(problems) < max_problems:
            problems.append(msg)
        elif len(problems) == max_problems:
            problems.append("... (more problems suppressed)")

    def take_output(msgs):
        loads = orjson.loads
        for m in msgs:
            v = loads(m.value())
            u = v.get("user")
            if m.key() != (u or "").encode():
                problem(f"output key {m.key()!r} != user {u!r}")
            expect_count = seen_count[u] + 1
            seq = per_user_in.get(u, [])
            if v.get("count") != expect_count:
                problem(f"user {u}: count {v.get('count')} where {expect_count} expected (gap or repeat)")
            if expect_count > len(seq):
                problem(f"user {u}: output #{expect_count} but only {len(seq)} input records")
            else:
                rid, amount = seq[expect_count - 1]
                running[u] += amount
                if v.get("sum") != running[u]:
                    problem(f"user {u}: sum {v.get('sum')} at count {expect_count}, expected {running[u]}")
                if v.get("last_id") != rid:
                    problem(f"user {u}: last_id {v.get('last_id')} at count {expect_count}, expected {rid}")
            seen_count[u] = expect_count

    n_out = consume_all(bootstrap, output_topic, take_output)
    for u, seq in per_user_in.items():
        if seen_count.get(u, 0) != len(seq):
            problem(f"user {u}: {seen_count.get(u, 0)} outputs for {len(seq)} inputs")
    if n_out != n_in:
        problem(f"{n_out} output records for {n_in} input records")
    return VerifyResult(not problems, n_in, n_out, len(per_user_in), problems)
