"""Listing partition offsets rides out a cluster whose leadership just moved (after a
broker restart the first answers can be FENCED_LEADER_EPOCH) and a cluster that does not
answer at all (a worker cut off from it); a real failure is raised.
The admin client is the seam: a fake one answers with scripted futures."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors import offsets
from connectors.kafka_waits import KafkaWaits
from connectors.offsets import ClusterOffsets


class _Listed:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FakeAdmin:
    def __init__(self, script: list[KafkaError | int], waits: KafkaWaits | None = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.waits = waits
        self.blocked: list = []  # what the loop was marked as waiting for, at each call

    def list_offsets(self, specs, **_):
        self.calls += 1
        if self.waits is not None:
            self.blocked.append(self.waits.blocked_for(time.monotonic()))
        answer = self.script.pop(0)
        futures = {}
        for tp in specs:
            future: Future = Future()
            if isinstance(answer, KafkaError):
                future.set_exception(KafkaException(answer))
            else:
                future.set_result(_Listed(answer))
            futures[tp] = future
        return futures


def _offsets(admin: FakeAdmin) -> ClusterOffsets:
    return ClusterOffsets({}, admin_factory=lambda config: admin, retry_pause_s=0.0, waits=admin.waits)


def test_stale_leadership_after_a_broker_restart_is_asked_again():
    admin = FakeAdmin([KafkaError(KafkaError.FENCED_LEADER_EPOCH), KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION),
                       42])
    assert _offsets(admin).starts([TopicPartition("t", 0)]) == {("t", 0): 42}
    assert admin.calls == 3


def test_a_failure_that_asking_again_cannot_mend_is_raised():
    admin = FakeAdmin([KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        _offsets(admin).ends([TopicPartition("t", 0)])


def test_a_cluster_that_does_not_answer_is_waited_out_and_the_wait_is_shown(monkeypatch):
    """A worker cut off from the cluster while it restores its tasks (its listings time
    out) waits, marked as waiting for Kafka, as it does for committed offsets; it stopped
    with "Failed to query partition leaders: Local: Timed out" before. The time limit on
    asking again is for a cluster that answers "not yet", not for one that is away."""
    monkeypatch.setattr(offsets, "RETRY_FOR_S", 0.0)
    admin = FakeAdmin([KafkaError(KafkaError._TIMED_OUT)] * 3 + [7], waits=KafkaWaits())
    assert _offsets(admin).ends([TopicPartition("t", 0)]) == {("t", 0): 7}
    assert admin.calls == 4
    assert all(blocked is not None and blocked[0] == "list partition offsets" for blocked in admin.blocked), \
        admin.blocked
    assert admin.waits.blocked_for(time.monotonic()) is None


class _UnreachableAdmin(FakeAdmin):
    def list_topics(self, **_):
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


def test_connecting_ahead_of_the_first_question_keeps_that_client_and_leaves_a_failure_to_the_question():
    made = []
    admin = _UnreachableAdmin([7])

    def factory(config):
        made.append(admin)
        return admin

    cluster = ClusterOffsets({}, admin_factory=factory, retry_pause_s=0.0)
    cluster.connect()  # the cluster does not answer: no error yet
    assert cluster.starts([TopicPartition("t", 0)]) == {("t", 0): 7}
    assert len(made) == 1, "the first question goes to the client that connected"
