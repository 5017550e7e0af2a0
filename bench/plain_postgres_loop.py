"""The baseline of the PostgreSQL benchmark: the plain loop a Python programmer would
write to copy a topic into a table. confluent-kafka in, psycopg 3 COPY out in batches of
the same size as the sink's, a database commit per batch, then the offsets (at least
once). It stops once it has written `--records` rows."""

from __future__ import annotations

import argparse

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
    args = ap.parse_args()
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([args.topic])
    copy_sql = sql.SQL("COPY {} (order_id, user_id, amount) FROM STDIN").format(sql.Identifier(args.table))
    loads = orjson.loads
    written = 0
    rows: list[tuple] = []
    with psycopg.connect(args.dsn) as conn:
        while written < args.records:
            for msg in consumer.consume(5000, 0.5):
                if msg.error() is None:
                    order = loads(msg.value())
                    rows.append((order["id"], order["user"], order["amount"]))
            if len(rows) >= args.batch or (rows and written + len(rows) >= args.records):
                with conn.cursor().copy(copy_sql) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
                consumer.commit(asynchronous=True)
                written += len(rows)
                rows = []
    consumer.close()


if __name__ == "__main__":
    main()
