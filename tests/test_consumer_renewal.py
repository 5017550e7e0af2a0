"""A consumer that fails for good while its process still holds the worker slot is
replaced in place: librdkafka fences a static member with its own rejoin after a broker
outage past the session timeout."""

from __future__ import annotations

import pytest

from service.runtime.loop import ConsumerRenewals
from tests.harness.scenario import RunningSum

pytestmark = pytest.mark.kafka


def test_a_fenced_consumer_with_no_newer_process_is_renewed_and_the_job_goes_on_exactly_once(bootstrap, tmp_path):
    """The fencing does not come on demand, so the worker's source reports librdkafka's
    fatal error itself (EOS_FAULT `fail-consumer`) between two checkpoints; everything
    after it is real: no newer process in the group, the tasks given up, a new consumer
    joining under the same instance id, the tasks restored, the oracle on the output."""
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=300, chunk_pause_s=0.3)
    scenario.start_feeding()
    worker = scenario.start_worker(fault="after_commit@3:fail-consumer", membership="--static-membership")
    scenario.wait_fed()
    scenario.wait_complete(worker, timeout=180)
    log = worker.log_text()
    assert "fault injection: failing the consumer" in log, log
    assert "a new consumer takes its place" in log, log
    assert worker.alive(), worker.log_tail()
    assert worker.terminate() == 0, worker.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()


def test_renewing_over_and_over_stops_the_worker():
    renewals = ConsumerRenewals(limit=3, window_s=600)
    assert [renewals.allow() for _ in range(4)] == [True, True, True, False]
    assert ConsumerRenewals(limit=3, window_s=0).allow() and ConsumerRenewals(limit=3, window_s=0).allow()
