"""Orders for the running-sum example, produced at a steady rate, and user profiles for
the examples that join them with a table.

Used by `eos generate` (the docker-compose stack's load) and by `eos demo`. Each order
is `{"id", "user", "amount"}` as examples/running_sum.py expects, keyed by order id,
so the job has to repartition by user. A profile is `{"user", "country"}`, keyed by
user: first one per user, then changes of random users' countries. Orders are JSON, or
Avro of `ORDER_AVRO_SCHEMA` through a schema registry (examples/registry_totals.py).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaException, Producer

log = logging.getLogger(__name__)

PROGRESS_EVERY = 500
HOUR_MS = 3_600_000

# Version 1 of the orders' Avro schema, registered under the topic's value subject.
ORDER_AVRO_SCHEMA = {
    "type": "record", "name": "Order", "namespace": "eos.examples",
    "fields": [{"name": "id", "type": "long"}, {"name": "user", "type": "string"},
               {"name": "amount", "type": "long"}],
}


def _json(order: dict) -> bytes:
    return json.dumps(order).encode()


class OrderGenerator:
    def __init__(self, bootstrap: str, topic: str, *, rate: float, users: int, start_id: int = 0,
                 seed: int | None = None, key_by_user: bool = False,
                 event_time_step_ms: int | None = None, encode: Callable[[dict], bytes] = _json) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.topic = topic
        self.rate = rate
        self.users = users
        self.next_id = start_id
        self.key_by_user = key_by_user
        self.encode = encode
        # Event time made of the ids rather than the clock: order i happens at the start
        # of the current hour + i * step, in "ts" and as its Kafka timestamp.
        self.event_time_step_ms = event_time_step_ms
        self.event_time_origin_ms = int(time.time() * 1000) // HOUR_MS * HOUR_MS
        self._rng = random.Random(seed)
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                                   "enable.idempotence": True, "partitioner": "murmur2_random"})

    def next_record(self) -> tuple[bytes, bytes, int | None]:
        """The next order: value, key and event time (None: the time it is produced)."""
        order = {"id": self.next_id, "user": f"user-{self._rng.randrange(self.users)}",
                 "amount": self._rng.randint(1, 100)}
        key = order["user"] if self.key_by_user else f"order-{self.next_id}"
        ts = None
        if self.event_time_step_ms is not None:
            ts = order["ts"] = self.event_time_origin_ms + self.next_id * self.event_time_step_ms
        self.next_id += 1
        return self.encode(order), key.encode(), ts

    def run(self, records: int | None = None, stop: threading.Event | None = None,
            progress: Callable[[int], None] | None = None) -> int:
        """Produces `records` records (None: until `stop` is set) at `rate` per second;
        returns how many were produced. `progress(n)` hears every PROGRESS_EVERY."""
        stop = stop or threading.Event()
        produced = 0
        started = time.monotonic()
        while (records is None or produced < records) and not stop.is_set():
            self._send(*self.next_record())
            produced += 1
            if produced % PROGRESS_EVERY == 0:
                self._producer.poll(0)
                if progress is not None:
                    progress(PROGRESS_EVERY)
                ahead = produced / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)
        remaining = self._producer.flush(30)
        if remaining:
            log.warning("%d records were not delivered to %s", remaining, self.topic)
        if progress is not None and produced % PROGRESS_EVERY:
            progress(produced % PROGRESS_EVERY)
        return produced - remaining

    def _send(self, value: bytes, key: bytes, ts: int | None) -> None:
        extra = {} if ts is None else {"timestamp": ts}
        while True:
            try:
                self._producer.produce(self.topic, value, key, **extra)
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise RuntimeError(f"producing to {self.topic}: {exc}") from exc


COUNTRIES = ("de", "fr", "it", "es", "nl", "pl", "pt", "se")


class ProfileGenerator(OrderGenerator):
    """User profiles `{"user", "country"}` keyed by user: one per user first, then the
    country of a random user changes."""

    def next_record(self) -> tuple[bytes, bytes, int | None]:
        index = self.next_id if self.next_id < self.users else self._rng.randrange(self.users)
        user = f"user-{index}"
        self.next_id += 1
        return json.dumps({"user": user, "country": self._rng.choice(COUNTRIES)}).encode(), user.encode(), None
