"""Baseline: a hand-written confluent-kafka exactly-once loop (running sum per user).

consume (batch) -> orjson parse -> dict sum per user -> produce (no per-record callback)
and, every ``--commit-interval`` seconds, a Kafka transaction commit that carries the
consumer positions (``send_offsets_to_transaction``) -- i.e. genuine exactly-once
read-process-write. State lives in a plain dict (no persistence); this is the practical
throughput ceiling for a single Python process, not a fault-tolerant stateful job.

    python bench/plain_loop.py --bootstrap localhost:39192 --input IN --output OUT \
        --group g1 [--commit-interval 1.0] [--expect N]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--commit-interval", type=float, default=1.0, help="seconds between transaction commits")
    ap.add_argument("--expect", type=int, default=0, help="exit once this many outputs are committed (0 = run forever)")
    ap.add_argument("--batch", type=int, default=5_000, help="max messages per consume() call")
    ap.add_argument("--transactional-id", default=None, help="default: unique per run")
    return ap.parse_args(argv)


def running_sum(out_topic: str, produce, poll):
    """The running sum's batch function: per user sum and count, one output per record
    (the same work, record for record, as the loop had inline)."""
    state: dict[bytes, list] = {}
    get = state.get
    loads, dumps = orjson.loads, orjson.dumps

    def process(msgs: list) -> int:
        n = 0
        for m in msgs:
            if m.error() is not None:
                skip_eof(m)
                continue
            key = m.key()
            v = loads(m.value())
            s = get(key)
            if s is None:
                s = state[key] = [0, 0]
            s[0] += v["amount"]
            s[1] += 1
            send(produce, poll, out_topic, dumps({"user": v["user"], "sum": s[0], "count": s[1], "last_id": v["id"]}),
                 key)
            n += 1
        return n

    process.summary = lambda: f"{len(state)} users"
    return process


def skip_eof(m) -> None:
    err = m.error()
    if err.code() != KafkaError._PARTITION_EOF:
        raise KafkaException(err)


def send(produce, poll, topic: str, value: bytes, key: bytes) -> None:
    try:
        produce(topic, value, key)
    except BufferError:
        # Local queue full: let librdkafka drain it, retry until accepted.
        while True:
            poll(0.05)
            try:
                produce(topic, value, key)
                return
            except BufferError:
                continue


def main(argv=None) -> int:
    return run(parse_args(argv), running_sum, "plain_loop")


def run(args: argparse.Namespace, make_process, name: str) -> int:
    """The exactly-once read-process-write loop around `make_process(output, produce,
    poll)`, which returns the function that turns a batch into outputs."""
    txn_id = args.transactional_id or f"bench-plain-{args.group}-{uuid.uuid4().hex[:8]}"

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            "queued.max.messages.kbytes": 128 * 1024,
            "queued.min.messages": 200_000,
            # librdkafka backs a partition off for this long once its local queue is above
            # queued.min.messages; the default (1000 ms) stalls a fast consumer for ~0.5 s.
            "fetch.queue.backoff.ms": 10,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": txn_id,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_152,
            "compression.type": "none",
        }
    )
    producer.init_transactions(30)

    in_txn = [0]  # records produced in the open transaction
    committed = [0]  # records whose transaction committed
    healthy = [True]  # False after an error: never commit a half-processed batch

    def commit() -> None:
        """Commit the open transaction with the consumer's current positions, open a new one."""
        assignment = consumer.assignment()
        positions = [tp for tp in consumer.position(assignment) if tp.offset >= 0] if assignment else []
        if positions:
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
        committed[0] += in_txn[0]
        in_txn[0] = 0
        producer.begin_transaction()

    def on_revoke(_consumer, _partitions) -> None:
        # Called inside consume()/close(), i.e. between fully processed batches: commit the
        # work of the partitions before they go (an eager revoke takes every partition).
        if healthy[0]:
            commit()

    stop = [False]

    def on_signal(_signo, _frame) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    producer.begin_transaction()
    consumer.subscribe([args.input], on_revoke=on_revoke)

    process = make_process(args.output, producer.produce, producer.poll)
    poll = producer.poll
    consume = consumer.consume
    batch = args.batch
    interval = args.commit_interval
    expect = args.expect
    monotonic = time.monotonic
    next_commit = monotonic() + interval

    try:
        while not stop[0]:
            n = process(consume(batch, 0.1))
            in_txn[0] += n
            poll(0)  # serve error/throttle events; there are no delivery callbacks
            now = monotonic()
            if now >= next_commit or (expect and committed[0] + in_txn[0] >= expect):
                if in_txn[0]:
                    commit()
                next_commit = now + interval
                if expect and committed[0] >= expect:
                    break
        if in_txn[0]:
            commit()
    except BaseException:
        healthy[0] = False
        raise
    finally:
        consumer.close()  # on a clean exit on_revoke commits once more (an empty transaction)
        try:
            producer.abort_transaction(30)  # the transaction opened after the last commit
        except KafkaException:
            pass
    print(f"{name}: committed {committed[0]} records, {process.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
