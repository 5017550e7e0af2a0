"""Consumer lag and records out, read from librdkafka's statistics.

librdkafka emits a JSON report every `statistics.interval.ms`, served by the client's
own poll/consume calls on the worker's loop thread. Reading it there costs one JSON
parse per interval and nothing per record, which is why lag and output counts come
from here rather than from the processing path or extra broker requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from service.monitoring.metrics import WorkerMetrics

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 1000
_UNASSIGNED = "-1"  # librdkafka's internal partition for records not yet partitioned

TopicPartitionKey = tuple[str, int]


class ConsumerLag:
    """The consumer's `stats_cb`: per assigned partition, records between the worker's
    position and the last stable offset (what a `read_committed` reader can reach).

    The callback runs inside `consume()`, after the previous batch was processed, so
    the task's next offset from `positions()` is the worker's true position. The
    report's `app_offset` (taken when the report was made, never later than that)
    only adds the transaction markers librdkafka skipped, so a drained transactional
    partition shows 0 rather than 1.
    """

    def __init__(self, metrics: WorkerMetrics, positions: Callable[[], dict[TopicPartitionKey, int | None]],
                 brokers: BrokerReachability | None = None) -> None:
        self.metrics = metrics
        self.positions = positions
        self.brokers = brokers if brokers is not None else BrokerReachability()
        self.lag: dict[TopicPartitionKey, int] = {}  # replaced whole, never mutated: read by other threads

    def __call__(self, stats_json: str) -> None:
        try:
            stats = orjson.loads(stats_json)
            self.brokers.update(stats, time.monotonic())
            self._update(stats)
        except Exception:  # noqa: BLE001 - a callback must never break consume()
            log.warning("could not read the consumer's statistics", exc_info=True)

    def _update(self, stats: dict) -> None:
        assigned = self.positions()
        lag: dict[TopicPartitionKey, int] = {}
        for topic, topic_stats in stats.get("topics", {}).items():
            for pid, p in topic_stats.get("partitions", {}).items():
                if pid == _UNASSIGNED:
                    continue
                key = (topic, int(pid))
                if key not in assigned:
                    continue
                value = partition_lag(p, assigned[key])
                if value is not None:
                    lag[key] = value
        m = self.metrics
        for key in self.lag.keys() - lag.keys():
            try:
                m.consumer_lag.remove(m.job, m.worker, key[0], str(key[1]))
            except KeyError:
                pass
        for (topic, partition), value in lag.items():
            m.labels(m.consumer_lag, topic=topic, partition=str(partition)).set(value)
        self.lag = lag


def partition_lag(p: dict, next_offset: int | None) -> int | None:
    """Lag of one partition from its statistics and the task's next offset (None before
    its first record from a partition without a committed offset), or None while the
    partition's end or the position is unknown."""
    end = p.get("ls_offset", -1)
    if end < 0:
        end = p.get("hi_offset", -1)
    if end < 0:
        return None
    position = max(next_offset if next_offset is not None else -1, p.get("app_offset", -1))
    if position < 0:
        position = p.get("lo_offset", -1)
    if position < 0:
        return None
    return max(0, end - position)


class BrokerReachability:
    """Whether the consumer reaches any broker, from the `brokers` section of its report.

    librdkafka reports every connection's state (UP, CONNECT, DOWN, ...) but raises no
    event when a lost cluster comes back; the statistics report is the one place both
    directions show, once per interval, at no cost per record. `down_since` is the
    monotonic time of the first report that found no broker up, None while one is.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.states: str = ""
        # Out of the consumer group since (monotonic), and in which join state. A silent
        # partition keeps connections "UP" until socket timeouts, but the group session
        # expires within its timeout, so this is where an idle, cut-off worker shows.
        self.out_of_group_since: float | None = None
        self.join_state: str = ""
        self._joined = False

    def update(self, stats: dict, now: float) -> None:
        self._update_group(stats.get("cgrp"), now)
        brokers = stats.get("brokers", {})
        if not brokers:
            return  # no report of connections yet: nothing learned
        if any(b.get("state") == "UP" for b in brokers.values()):
            self.down_since, self.states = None, ""
            return
        if self.down_since is None:
            self.down_since = now
        self.states = ", ".join(f"{name} {b.get('state', '?')}" for name, b in sorted(brokers.items())
                                if b.get("nodeid", -1) >= 0 or b.get("source") == "configured")

    def unreachable_for(self, now: float) -> float | None:
        return None if self.down_since is None else now - self.down_since

    def _update_group(self, cgrp: dict | None, now: float) -> None:
        if not cgrp:
            return
        state = str(cgrp.get("join_state", ""))
        if state == "steady":
            self._joined, self.out_of_group_since, self.join_state = True, None, ""
        elif self._joined and self.out_of_group_since is None:  # before the first join: starting
            self.out_of_group_since, self.join_state = now, state
        elif self.out_of_group_since is not None:
            self.join_state = state

    def out_of_group_for(self, now: float) -> tuple[str, float] | None:
        """(join state, seconds) once the consumer left the group it had joined."""
        since = self.out_of_group_since
        return None if since is None else (self.join_state, now - since)


class RecordsOut:
    """The producer's `stats_cb`: records transmitted per topic, as counter increments.

    A recreated producer (after a timed-out transactional call) starts its counts at
    zero under a new client name; deltas are kept per client so the counter only grows.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.total = 0
        self._client: str | None = None
        self._sent: dict[str, int] = {}

    def __call__(self, stats_json: str) -> None:
        try:
            self._update(orjson.loads(stats_json))
        except Exception:  # noqa: BLE001 - a callback must never break poll() or a commit
            log.warning("could not read the producer's statistics", exc_info=True)

    def _update(self, stats: dict) -> None:
        client = stats.get("name")
        if client != self._client:
            self._client, self._sent = client, {}
        m = self.metrics
        for topic, topic_stats in stats.get("topics", {}).items():
            sent = sum(p.get("txmsgs", 0) for pid, p in topic_stats.get("partitions", {}).items()
                       if pid != _UNASSIGNED)
            delta = sent - self._sent.get(topic, 0)
            if delta > 0:
                m.labels(m.records_out, topic=topic).inc(delta)
                self.total += delta
                self._sent[topic] = sent
