"""Baseline: the hand-written confluent-kafka exactly-once loop, joining each order with
its user's profile from a dict read from the profiles topic before the loop starts.

No table state, no timestamp order between the two topics, nothing kept across a
restart: the practical ceiling of a Python process for the enrichment.

    python bench/plain_enrichment.py --bootstrap localhost:39192 --input ORDERS \
        --profiles PROFILES --output OUT --group g1 [--commit-interval 1.0]
"""

from __future__ import annotations

import sys
import uuid

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from plain_loop import parse_args, run, send, skip_eof


def read_profiles(bootstrap: str, topic: str) -> dict[bytes, str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"profiles-{uuid.uuid4().hex[:8]}",
                         "enable.partition.eof": True, "isolation.level": "read_committed"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending, profiles = set(partitions), {}
        while pending:
            for m in consumer.consume(10_000, 1.0):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                    continue
                profiles[m.key()] = orjson.loads(m.value())["country"]
        return profiles
    finally:
        consumer.close()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = argv.index("--profiles")
    profiles_topic = argv[at + 1]
    del argv[at:at + 2]
    args = parse_args(argv)
    profiles = read_profiles(args.bootstrap, profiles_topic)

    def enrichment(out_topic: str, produce, poll):
        get, loads, dumps = profiles.get, orjson.loads, orjson.dumps

        def process(msgs: list) -> int:
            n = 0
            for m in msgs:
                if m.error() is not None:
                    skip_eof(m)
                    continue
                key = m.key()
                order = loads(m.value())
                order["country"] = get(key)
                send(produce, poll, out_topic, dumps(order), key)
                n += 1
            return n

        process.summary = lambda: f"{len(profiles)} profiles"
        return process

    return run(args, enrichment, "plain_enrichment")


if __name__ == "__main__":
    sys.exit(main())
