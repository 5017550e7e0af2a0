"""Global tables: every worker holds every partition of the topic (Kafka Streams'
GlobalKTable), for lookups by any key without co-partitioning.

A global table is derived from its topic alone, so it is not part of checkpoints: each
worker keeps it in a RocksDB of its own beside its task state, with the offset read up
to in each partition written in the same batch as the rows. At start the worker reads
every partition from those offsets (or the beginning) to the end the topic had then,
before it processes anything; afterwards the worker's consumer reads the partitions
alongside its tasks' and applies changes as they come. A lookup sees the table as this
worker has read it: with a restart in between, a record may meet a newer row than it
met the first time (as in Kafka Streams).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from connectors.reading import open_reader, read_available
from connectors.serdes import BYTES, Serde, SerdeError
from eos.errors import KafkaClientError, RecordError
from service.job.api import Node
from statestore.codecs import JSON_CODEC
from statestore.rocks import TaskStore
from statestore.tables import ValueTable

log = logging.getLogger(__name__)

ROWS, OFFSETS = "rows", "offsets"
# Rows and offsets are written to RocksDB at most this often while the topic changes.
FLUSH_EVERY_S = 1.0
BOOTSTRAP_POLL_S = 0.5


class GlobalTable:
    """One global table in one worker."""

    def __init__(self, node: Node, state_dir: Path, group: str, worker_id: str) -> None:
        options = node.options
        self.uid = node.uid
        self.topic: str = options["topic"]
        self._key_serde: Serde = options["key_serde"]
        self._value_serde: Serde = options["value_serde"]
        self._directory, self._lock = _claim(Path(state_dir) / group / "global" / node.uid / worker_id)
        self._store = TaskStore(self._directory, [ROWS, OFFSETS])
        self._rows = ValueTable(self._store, ROWS, options["codec"])
        self._offsets = ValueTable(self._store, OFFSETS, JSON_CODEC)
        self._last_flush = time.monotonic()
        self.partitions = 0  # the topic's, known once bootstrapped

    def get(self, key: Any) -> Any:
        return self._rows.get(key)

    def positions(self) -> list[TopicPartition]:
        """Where each partition continues: after what the table holds."""
        return [TopicPartition(self.topic, p, self._offsets.get(p, OFFSET_BEGINNING)) for p in range(self.partitions)]

    def apply(self, msgs: list) -> None:
        """Records of one partition of the topic: each replaces or (null value) deletes
        its key's row. A record that cannot be read stops the worker: the table would
        otherwise differ from its topic without anyone knowing."""
        rows = self._rows
        for msg in msgs:
            try:
                key = msg.key() if self._key_serde is BYTES else self._key_serde.deserialize(msg.key())
                value = msg.value()
                if value is None:
                    rows.delete(key)
                else:
                    rows.put(key, value if self._value_serde is BYTES else self._value_serde.deserialize(value))
            except SerdeError as exc:
                raise RecordError(f"global table {self.uid!r} cannot read a record: {exc}", topic=msg.topic(),
                                  partition=msg.partition(), offset=msg.offset(), operator=self.uid,
                                  cause=exc) from exc
        last = msgs[-1]
        self._offsets.put(last.partition(), last.offset() + 1)

    def maybe_flush(self, now: float) -> None:
        if now - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Rows and offsets in one batch, so the store never holds one without the other."""
        self._last_flush = time.monotonic()
        batch = self._store.new_batch()
        count = self._rows.drain_into(batch, self._store.handle(ROWS))
        count += self._offsets.drain_into(batch, self._store.handle(OFFSETS))
        if count:
            self._store.commit(batch)
        if self._rows.entry_bytes() > CACHE_BYTES:
            self._rows.evict()

    def bootstrap(self, consumer_config: dict[str, Any], partitions: int, timeout_s: float) -> list[TopicPartition]:
        """Reads every partition up to its end (the last stable offset, as read_committed
        consumers see it); returns where the worker's consumer continues."""
        self.partitions = partitions
        began = time.monotonic()
        consumer = open_reader(consumer_config, f"eos-global-{uuid.uuid4().hex}", self.positions())
        try:
            pending = set(range(partitions))
            read = 0
            while pending:
                if time.monotonic() - began > timeout_s:
                    raise KafkaClientError(f"global table {self.uid!r}: could not read topic {self.topic!r} to its "
                                           f"end within {timeout_s:.0f}s (partitions {sorted(pending)} left)")
                for msg in read_available(consumer, 5000, BOOTSTRAP_POLL_S):
                    err = msg.error()
                    if err is None:
                        self.apply([msg])
                        read += 1
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    elif err.fatal():
                        raise KafkaException(err)
        except KafkaException as exc:
            raise KafkaClientError(f"global table {self.uid!r}: reading topic {self.topic!r} failed: {exc}") from exc
        finally:
            consumer.close()
        self.flush()
        log.info("global table %s restored from %s: %d records read in %.2fs", self.uid, self.topic, read,
                 time.monotonic() - began)
        return self.positions()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._store.close()
            os.close(self._lock)


# The rows a global table keeps decoded in memory before it leaves them to RocksDB.
CACHE_BYTES = 32 << 20


def _claim(path: Path) -> tuple[Path, int]:
    """The table's directory, locked for this process. Another live process of the same
    worker slot (a frozen predecessor) holds it: this one then builds its own copy."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path / "db", fd
    except BlockingIOError:
        os.close(fd)
        own = path.parent / f"{path.name}-{uuid.uuid4().hex[:8]}"
        log.warning("global table directory %s is held by another process; reading the table into %s", path, own)
        shutil.rmtree(own, ignore_errors=True)
        return _claim(own)
