"""The worker's consumer keeps its position through what the client library does on its
own: a partition read to its end (an end-of-partition event) and then paused and
resumed, as librdkafka pauses every partition of a group leader while its assignor runs,
must go on with the next record written there. librdkafka 2.2 to 2.13.0 moved such a
partition's position one past its end: after the pause it fetched from there, and the
next record was skipped, or the partition reported as truncated and the worker stopped
(seen as "position N is past the log's end (N-1)" when workers joined a group)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka_source import MIN_CLIENT_LIBRARY, KafkaSource, check_client_library, consumer_config
from eos.errors import ConfigurationError
from tests.harness.kafka import produce, unique_name


def _source(bootstrap: str) -> KafkaSource:
    group = unique_name("position")
    return KafkaSource(consumer_config(bootstrap, group, group, session_timeout_ms=6000, max_poll_interval_ms=60_000,
                                       static_membership=False, worker_id="w", extra={}))


def _read(source: KafkaSource, until, timeout_s: float = 20.0) -> list:
    deadline, got = time.monotonic() + timeout_s, []
    while not until(got):
        assert time.monotonic() < deadline, f"gave up waiting; read {[m.offset() for m in got]}"
        got.extend(source.consume(100, 0.2))
        assert not source.take_out_of_range(), "the consumer lost its position"
    return got


@contextmanager
def _reading(bootstrap: str, topic: str, records: int) -> Iterator[KafkaSource]:
    """A source reading partition 0 of `topic` from the start, `records` written there."""
    produce(bootstrap, topic, [(b"k", b"%d" % i) for i in range(records)], partition=0)
    source = _source(bootstrap)
    try:
        source.take([TopicPartition(topic, 0, 0)])
        yield source
    finally:
        source.close()


def test_a_partition_read_to_its_end_goes_on_with_the_next_record_after_a_pause(bootstrap, new_topic):
    topic = new_topic("position", partitions=1)
    key = (topic, 0)
    with _reading(bootstrap, topic, 5) as source:
        assert [m.offset() for m in _read(source, lambda got: key in source.ends)] == [0, 1, 2, 3, 4]
        source.hold([key], "rebalance")
        source.release([key], "rebalance")
        produce(bootstrap, topic, [(b"k", b"5")], partition=0)
        assert [m.offset() for m in _read(source, lambda got: got)] == [5]


def test_a_released_partition_goes_on_from_where_it_was_held_or_sought(bootstrap, new_topic):
    """Releasing a hold resumes the partition and seeks it (a seek starts the fetch at
    once, where a bare resume waits for librdkafka's next periodic wake-up): it must go
    on with the record after the last one read, or from where it was sought while held."""
    topic = new_topic("position", partitions=1)
    key = (topic, 0)
    with _reading(bootstrap, topic, 50) as source:
        first: list = []
        while len(first) < 3:
            first.extend(m for m in source.consume(3 - len(first), 0.2) if m.error() is None)
        source.hold([key], "buffer full")
        assert not source.consume(10, 0.5), "a held partition delivered records"
        source.release([key], "buffer full")
        rest = _read(source, lambda got: len(got) >= 47)
        assert [m.offset() for m in first + rest] == list(range(50))
        source.hold([key], "savepoint")
        source.seek(TopicPartition(topic, 0, 20))
        source.release([key], "savepoint")
        assert [m.offset() for m in _read(source, lambda got: len(got) >= 30)] == list(range(20, 50))


class _Watched:
    """The source's consumer, noting each seek and resume asked of it and taking
    `resume_s` over each resume: whatever a resumed partition's fetcher does before the
    source's next call (librdkafka wakes it at least once a second) happens first."""

    def __init__(self, consumer: Consumer, resume_s: float = 0.0) -> None:
        self._consumer, self.resume_s = consumer, resume_s
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        return getattr(self._consumer, name)

    def seek(self, partition: TopicPartition) -> None:
        self.calls.append(("seek", partition.partition, partition.offset))
        self._consumer.seek(partition)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", *sorted(p.partition for p in partitions)))
        self._consumer.resume(partitions)
        time.sleep(self.resume_s)


def _assigned(bootstrap: str, topic: str, committed: dict[int, int], resume_s: float = 0.0) -> KafkaSource:
    """A source of a new group given every partition of `topic`, still paused, after
    `committed` offsets were committed for the group."""
    source = _source(bootstrap)
    if committed:
        committer = Consumer({"bootstrap.servers": bootstrap, "group.id": source.config["group.id"]})
        committer.commit(offsets=[TopicPartition(topic, p, o) for p, o in committed.items()], asynchronous=False)
        committer.close()
    source.consumer = _Watched(source.consumer, resume_s)
    source.subscribe([topic])
    deadline = time.monotonic() + 30
    while not any(event.partitions for event in source.take_rebalances()):
        assert time.monotonic() < deadline, "never assigned"
        source.consume(10, 0.2)
    return source


def test_a_partition_whose_committed_offset_is_gone_starts_where_its_task_begins(bootstrap, new_topic):
    """A newly assigned partition stands at its committed offset until its task, once
    restored, says where to begin; that offset may have been deleted from the log. If
    the partition fetched from there first, the consumer reported it gone after the task
    had moved past it: the gap was counted twice, and the partition sought again."""
    topic = new_topic("position", partitions=1)
    produce(bootstrap, topic, [(b"k", b"%d" % i) for i in range(100)], partition=0)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for done in admin.delete_records([TopicPartition(topic, 0, 60)]).values():
        done.result(timeout=30)
    source = _assigned(bootstrap, topic, {0: 0}, resume_s=1.5)
    try:
        source.start_reading([TopicPartition(topic, 0, 60)])
        assert [m.offset() for m in _read(source, lambda got: len(got) >= 40)] == list(range(60, 100))
    finally:
        source.close()


def test_a_position_the_broker_looks_up_is_sought_once(bootstrap, new_topic):
    """A partition with nothing committed begins where the broker says the log starts.
    Each seek to such a position starts a lookup of its own, and an answer that comes
    after the fetch began takes it back to the start: the records already read are read
    again (seen as every record of a new job's first seconds counted twice). A partition
    given an offset is sought before it is resumed, and again after."""
    topic = new_topic("position", partitions=2)
    for partition in (0, 1):
        produce(bootstrap, topic, [(b"k", b"%d" % i) for i in range(50)], partition=partition)
    source = _assigned(bootstrap, topic, {0: 20})
    try:
        source.start_reading([TopicPartition(topic, 0, 20), TopicPartition(topic, 1, OFFSET_BEGINNING)])
        calls = source.consumer.calls
        assert calls.count(("seek", 1, OFFSET_BEGINNING)) == 1, calls
        assert calls.index(("seek", 0, 20)) < calls.index(("resume", 0, 1)), calls
        got = _read(source, lambda got: len(got) >= 80)
        assert sorted((m.partition(), m.offset()) for m in got) == [(0, o) for o in range(20, 50)] + \
            [(1, o) for o in range(50)]
    finally:
        source.close()


def test_a_held_partition_whose_position_the_broker_looks_up_is_sought_once(bootstrap, new_topic):
    """The same for a partition held when its task begins (a join's input waiting for
    room): sought once, it goes on from the looked-up position when released."""
    topic = new_topic("position", partitions=1)
    produce(bootstrap, topic, [(b"k", b"%d" % i) for i in range(50)], partition=0)
    source = _assigned(bootstrap, topic, {})
    try:
        source.hold([(topic, 0)], "buffer full")
        source.start_reading([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        source.release([(topic, 0)], "buffer full")
        assert [m.offset() for m in _read(source, lambda got: len(got) >= 50)] == list(range(50))
        assert source.consumer.calls.count(("seek", 0, OFFSET_BEGINNING)) == 1, source.consumer.calls
    finally:
        source.close()


@pytest.mark.parametrize("version, usable", [("2.12.1", False), ("2.13.0", False), ("2.13.2", True), ("2.16.0", True),
                                             ("3.0.0", True)])
def test_a_client_library_that_moves_positions_past_the_end_is_refused(version, usable):
    if usable:
        check_client_library(version)
    else:
        with pytest.raises(ConfigurationError, match=f"librdkafka {version}.*{'.'.join(map(str, MIN_CLIENT_LIBRARY))}"):
            check_client_library(version)
