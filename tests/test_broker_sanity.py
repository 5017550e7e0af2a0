"""The harness is real: the broker's transaction coordinator behaves as exactly-once needs.

If any of these fail, no exactly-once claim made by the other tests means anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.harness.kafka import produce, read_all, unique_name
from tests.harness.worker_process import wait_for

pytestmark = pytest.mark.kafka


def _txn_producer(bootstrap: str, txn_id: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                         "transaction.timeout.ms": 60000})
    producer.init_transactions(30)
    return producer


def test_aborted_transaction_is_invisible_to_read_committed(bootstrap, new_topic):
    topic = new_topic("aborted", partitions=1)
    producer = _txn_producer(bootstrap, unique_name("txn"))
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, value=b"aborted-%d" % i)
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(30)

    committed = [v for _, v in read_all(bootstrap, topic, isolation="read_committed")]
    uncommitted = [v for _, v in read_all(bootstrap, topic, isolation="read_uncommitted")]

    assert committed == [b"committed"]
    assert sorted(uncommitted) == sorted([b"aborted-%d" % i for i in range(10)] + [b"committed"])


_KILLED_PRODUCER = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Producer
    bootstrap, topic, txn_id = sys.argv[1:4]
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                  "transaction.timeout.ms": 600000})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(100):
        p.produce(topic, value=b"doomed-%d" % i)
    assert p.flush(30) == 0
    print("ready", flush=True)
    time.sleep(600)
""")


def test_records_of_a_sigkilled_transaction_never_become_visible(bootstrap, new_topic):
    topic = new_topic("killed", partitions=2)
    txn_id = unique_name("txn")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_PRODUCER, bootstrap, topic, txn_id],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    # The records reached the broker: a read_uncommitted reader sees them.
    assert len(read_all(bootstrap, topic, isolation="read_uncommitted")) == 100

    successor = _txn_producer(bootstrap, txn_id)  # aborts the dangling transaction
    successor.begin_transaction()
    successor.produce(topic, value=b"after", partition=0)
    successor.commit_transaction(30)

    assert [v for _, v in read_all(bootstrap, topic)] == [b"after"]


def test_older_producer_instance_is_fenced_at_commit(bootstrap, new_topic):
    topic = new_topic("fenced", partitions=1)
    txn_id = unique_name("txn")
    zombie = _txn_producer(bootstrap, txn_id)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie")
    zombie.flush(30)

    successor = _txn_producer(bootstrap, txn_id)

    with pytest.raises(KafkaException) as raised:
        zombie.produce(topic, value=b"zombie-2")
        zombie.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal() or error.txn_requires_abort(), f"expected fencing, got {error}"
    assert "fenc" in str(error).lower() or "epoch" in str(error).lower(), str(error)

    successor.begin_transaction()
    successor.produce(topic, value=b"successor")
    successor.commit_transaction(30)
    assert [v for _, v in read_all(bootstrap, topic)] == [b"successor"]


def test_offsets_commit_atomically_with_output_and_keep_their_metadata(bootstrap, new_topic):
    source, sink = new_topic("src", partitions=1), new_topic("out", partitions=1)
    produce(bootstrap, source, [(None, b"r%d" % i) for i in range(20)])
    group = unique_name("group")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    producer = _txn_producer(bootstrap, unique_name("txn"))
    tp = TopicPartition(source, 0)
    consumer.assign([TopicPartition(source, 0, 0)])
    seen = []
    while len(seen) < 20:
        seen += [m for m in consumer.consume(100, timeout=1.0) if m.error() is None]

    # First transaction: output of the first 10 records plus their offset, then abort.
    producer.begin_transaction()
    for m in seen[:10]:
        producer.produce(sink, value=m.value())
    producer.send_offsets_to_transaction(
        [TopicPartition(source, 0, 10, metadata="chk-1")], consumer.consumer_group_metadata())
    producer.abort_transaction(30)
    assert consumer.committed([tp], timeout=30)[0].offset < 0, "aborted offsets must not commit"
    assert read_all(bootstrap, sink) == []

    # Second transaction: the same, committed.
    producer.begin_transaction()
    for m in seen[:10]:
        producer.produce(sink, value=m.value())
    producer.send_offsets_to_transaction(
        [TopicPartition(source, 0, 10, metadata="chk-2")], consumer.consumer_group_metadata())
    producer.commit_transaction(30)

    committed = consumer.committed([tp], timeout=30)[0]
    assert committed.offset == 10
    assert committed.metadata == "chk-2"
    assert [v for _, v in read_all(bootstrap, sink)] == [b"r%d" % i for i in range(10)]
    consumer.close()


def test_a_test_runs_broker_dies_with_the_process_that_started_it(tmp_path):
    """A test run stopped by a signal never reaches its clean-up: the broker it started
    must not outlive it and hold its port for the next run."""
    from service.local_kafka import BrokerSettings, LocalBroker
    from tests.harness.ports import free_port

    settings = BrokerSettings(port=free_port(), controller_port=free_port(), data_dir=tmp_path, dies_with_owner=True)
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from service.local_kafka import BrokerSettings, LocalBroker
        LocalBroker(BrokerSettings(port={settings.port}, controller_port={settings.controller_port},
                                   data_dir={str(tmp_path)!r}, dies_with_owner=True)).start()
        print("started", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert owner.stdout.readline().strip() == "started"
        broker = LocalBroker(settings)
        assert broker.pid() is not None
    finally:
        owner.kill()
        owner.wait(30)
    wait_for(lambda: broker.pid() is None, 30, 0.2, "the broker to die with its owner")
