"""Listing partition offsets rides out a cluster whose leadership just moved (after a
broker restart the first answers can be FENCED_LEADER_EPOCH); a real failure is raised.
The admin client is the seam: a fake one answers with scripted futures."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.offsets import ClusterOffsets


class _Listed:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FakeAdmin:
    def __init__(self, script: list[KafkaError | int]) -> None:
        self.script = list(script)
        self.calls = 0

    def list_offsets(self, specs, **_):
        self.calls += 1
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
    return ClusterOffsets({}, admin_factory=lambda config: admin, retry_pause_s=0.0)


def test_stale_leadership_after_a_broker_restart_is_asked_again():
    admin = FakeAdmin([KafkaError(KafkaError.FENCED_LEADER_EPOCH), KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION),
                       42])
    assert _offsets(admin).starts([TopicPartition("t", 0)]) == {("t", 0): 42}
    assert admin.calls == 3


def test_a_failure_that_asking_again_cannot_mend_is_raised():
    admin = FakeAdmin([KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        _offsets(admin).ends([TopicPartition("t", 0)])
