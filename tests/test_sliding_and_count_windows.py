"""Sliding windows and count windows, exactly once, against the real broker with SIGKILLs.

Workers run `eos run tests/jobs/windowed_orders.py` with `-p shape=sliding` or
`-p shape=count`: each job sends the windows' final results to one topic and every
update of the same windows to another. The input has out-of-order and late records; the
independent oracle (tests/harness/window_oracle.py) derives every window from the
definitions and checks both topics.
"""

from __future__ import annotations

import pytest

from tests.harness.window_oracle import timed_orders
from tests.harness.windowed_run import PARTITIONS, WindowedRun, by_user_partition

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_sliding_windows_are_exactly_once_under_kills(bootstrap, tmp_path):
    """Per user, the moving totals over the last 10 s across a repartition while workers
    are SIGKILLed at random moments: every window the oracle finds (made by the records'
    times, both ends inclusive) appears once among the final results with its totals and
    its end as timestamp, and its updates count up one record at a time, each once."""
    run = WindowedRun(bootstrap, tmp_path, timed_orders(4_000, PARTITIONS, seed=23, late_every=9), "sliding",
                      "final", updates=True)
    assert run.expected.late_records > 50 and len(run.expected.windows) > 2 * 4_000 - 1_000
    report = run.run_through_kills(kills=4, seed=29)
    assert report.ok, report.summary()
    updates = run.check_updates()
    assert updates.ok, updates.summary()


def test_count_windows_fire_exactly_once_under_kills(bootstrap, tmp_path):
    """The last 5 orders of each user, every 2 orders, while workers are SIGKILLed: each
    window the oracle finds in the user's order sequence fires exactly once with its
    totals, and its updates count 1, 2, ... each once. A user's orders come from one
    input partition, so their order is the same in every attempt."""
    run = WindowedRun(bootstrap, tmp_path, by_user_partition(timed_orders(4_000, PARTITIONS, seed=31)), "count",
                      "final", updates=True)
    report = run.run_through_kills(kills=4, seed=37)
    assert report.ok, report.summary()
    updates = run.check_updates()
    assert updates.ok, updates.summary()


def test_oracle_catches_count_windows_run_at_least_once_under_kills(bootstrap, tmp_path):
    """The oracle's self-test on a real run: a worker killed after its outputs were
    flushed but before its offsets were committed reads those orders again, so windows
    fire again and later windows hold the wrong orders; the oracle must see it."""
    run = WindowedRun(bootstrap, tmp_path, by_user_partition(timed_orders(6_000, PARTITIONS, seed=5)), "count",
                      "final")
    report = run.run_at_least_once_with_kills()
    assert not report.ok, "the oracle accepted an at-least-once run with kills: it is too weak"
    assert report.repeated or report.wrong, report.summary()
