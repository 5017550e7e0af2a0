"""The baseline of the PostgreSQL benchmark: the plain loop a Python programmer would
write to copy a topic into a table. confluent-kafka in, psycopg 3 COPY out in batches of
the same size as the sink's, a database commit as often as eos checkpoints (every
second, and at the end), then the offsets (at least once). It stops once it has
committed `--records` rows."""

from __future__ import annotations

import argparse
import time

import orjson
import psycopg
from confluent_kafka import Consumer
from psycopg import sql


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for name in ("--bootstrap", "--topic", "--group", "--dsn", "--table"):
        ap.add_argument(name, required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    args = ap.parse_args()
    # The fetch settings of the plain Kafka loop (bench/plain_loop.py): without them the
    # loop waits on librdkafka's default fetch backoff, not on PostgreSQL.
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 8 << 20,
                         "queued.max.messages.kbytes": 128 << 10, "queued.min.messages": 200_000,
                         "fetch.queue.backoff.ms": 10})
    consumer.subscribe([args.topic])
    copy_sql = sql.SQL("COPY {} (order_id, user_id, amount) FROM STDIN").format(sql.Identifier(args.table))
    loads = orjson.loads
    written = committed = 0
    rows: list[tuple] = []
    last_commit = time.monotonic()
    with psycopg.connect(args.dsn) as conn:
        while committed < args.records:
            for msg in consumer.consume(5000, 0.5):
                if msg.error() is None:
                    order = loads(msg.value())
                    rows.append((order["id"], order["user"], order["amount"]))
            if len(rows) >= args.batch or (rows and written + len(rows) >= args.records):
                with conn.cursor().copy(copy_sql) as copy:
                    for row in rows:
                        copy.write_row(row)
                written += len(rows)
                rows = []
            if written > committed and (written >= args.records or time.monotonic() - last_commit >= args.commit_interval):
                conn.commit()
                consumer.commit(asynchronous=True)
                committed, last_commit = written, time.monotonic()
    consumer.close()


if __name__ == "__main__":
    main()
