"""Plain confluent-kafka helpers for tests: topics with unique names, producing input,
reading a topic to its end. Independent of the product's own Kafka code on purpose."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.group import member_identity


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 4) -> None:
    """Returns once the cluster lists every topic with a leader for each partition: a
    broker answers a creation before its metadata lists the topic, and a worker started
    in between refuses to run without its input."""
    names = list(names)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                                  operation_timeout=30)
    for future in futures.values():
        future.result(timeout=60)
    deadline = time.monotonic() + 30
    while True:
        listed = admin.list_topics(timeout=10).topics
        pending = [n for n in names if n not in listed or listed[n].error is not None
                   or len(listed[n].partitions) != partitions
                   or any(p.leader < 0 for p in listed[n].partitions.values())]
        if not pending:
            return
        assert time.monotonic() < deadline, f"the cluster did not list {pending} within 30 s of creating them"
        time.sleep(0.05)


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                         "partitioner": "murmur2_random", "enable.idempotence": True})
    count = 0
    for key, value in records:
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} records were not delivered to {topic}"
    return count


def read_all(bootstrap: str, topic: str, *, isolation: str = "read_committed",
             timeout: float = 60.0, with_meta: bool = False, with_headers: bool = False,
             with_timestamp: bool = False) -> list:
    """Reads every record of `topic` from the beginning up to its current end (the last
    stable offset for read_committed). Returns (key, value) or, with `with_meta`,
    (partition, offset, key, value) or, with `with_headers`, (key, value, headers) or, with
    `with_timestamp`, (key, value, Kafka timestamp) tuples (both: the timestamp appended
    to the first)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique_name("reader"),
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        out: list = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(pending)} did not reach their end")
            for msg in consumer.consume(10000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise RuntimeError(f"reading {topic}: {err}")
                if with_meta and with_timestamp:
                    out.append((msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp()[1]))
                elif with_meta:
                    out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
                elif with_headers:
                    out.append((msg.key(), msg.value(), msg.headers() or []))
                elif with_timestamp:
                    out.append((msg.key(), msg.value(), msg.timestamp()[1]))
                else:
                    out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def group_members(bootstrap: str, group: str, timeout: float = 10.0) -> set[str]:
    """Worker ids of the group's current members (static instance id, else from the
    client id `{group}-{worker id}#{incarnation}`)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    return {_worker(group, m) for m in description.members}


def group_assignment(bootstrap: str, group: str, timeout: float = 10.0) -> dict[str, set[tuple[str, int]]]:
    """Each member's assigned partitions, by worker id."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    return {_worker(group, m): {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
            for m in description.members}


def _worker(group: str, member) -> str:
    identity = member_identity(group, member.group_instance_id, member.client_id)
    return identity[0] if identity else member.client_id
