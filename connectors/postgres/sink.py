"""`PostgresSink`: what a job passes to `.sink(...)` to write rows into PostgreSQL exactly
once.

    .sink(PostgresSink(params["postgres"], "user_totals", key=["user_id"],
                       columns={"user_id": "text", "total": "bigint", "orders": "integer"},
                       value=lambda t: {"total": t["sum"], "orders": t["count"]}), uid="totals-db")

The record key fills the key columns (one column: the key itself; several: a tuple or
list in their order, or a dict by column name) and `value` maps the record value to the
other columns (a dict by name, or a tuple in their order; by default the value itself,
a dict). Modes: `upsert` (the key's row is inserted or replaced; a tombstone, a null
value, deletes it) and `insert` (every record appends a row; key columns optional).
Each task writes its rows in its own transaction, prepared at every checkpoint and
committed once the checkpoint's Kafka commit succeeded (connectors/postgres/writer.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from connectors.postgres.errors import describe
from connectors.postgres.table import INSERT, MODES, UPSERT, TableShape, declare
from connectors.postgres.writer import PostgresWriter, WriterSettings
from connectors.two_phase import SinkContext
from eos.errors import ConfigurationError, SinkUnavailableError

log = logging.getLogger(__name__)

ConnectFactory = Callable[..., psycopg.Connection]


class PostgresSink:
    def __init__(self, dsn: str, table: str, *, columns: Mapping[str, str] | Sequence[str],
                 key: Sequence[str] = (), value: Callable[[Any], Any] | None = None, mode: str = UPSERT,
                 batch_rows: int = 10_000, lock_timeout_s: float = 10.0, recovery_timeout_s: float = 60.0,
                 commit_timeout_s: float = 30.0, create_table: bool = True,
                 connect: ConnectFactory = psycopg.connect) -> None:
        if mode not in MODES:
            raise ConfigurationError(f"PostgresSink mode {mode!r} is not one of {', '.join(MODES)}")
        if batch_rows < 1:
            raise ConfigurationError(f"PostgresSink batch_rows must be at least 1, not {batch_rows}")
        if isinstance(key, str):
            key = (key,)
        self.dsn = dsn
        self.table = table
        self.columns = columns
        self.key = tuple(key)
        self.value = value
        self.mode = mode
        self.batch_rows = batch_rows
        self.lock_timeout_s = lock_timeout_s
        self.recovery_timeout_s = recovery_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.create_table = create_table
        self._connect = connect
        self._shape: TableShape | None = None

    def describe(self) -> str:
        params = conninfo_to_dict(self.dsn)
        where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        return f"PostgreSQL table {self.table} at {where}"

    # -- TransactionalSink --------------------------------------------------------------

    def check(self, exactly_once: bool) -> None:
        """Waits for the database (up to the recovery timeout), checks it can prepare
        transactions, and declares the table."""
        deadline = time.monotonic() + self.recovery_timeout_s
        while True:
            try:
                with self.connection(f"eos check {self.table}") as conn:
                    if exactly_once:
                        prepared = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0])
                        if prepared < 1:
                            raise ConfigurationError(
                                f"{self.describe()}: the server has max_prepared_transactions = 0, and exactly-once "
                                "prepares one transaction per task writing to it at each checkpoint; set it to at "
                                "least the number of such tasks (postgresql.conf, then restart the server), or run "
                                "with --processing-guarantee at-least-once")
                    self._shape = declare(conn, self.table, self.columns, self.key, self.mode, self.create_table)
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise SinkUnavailableError(f"{self.describe()}: cannot connect within "
                                               f"{self.recovery_timeout_s:g}s: {describe(exc)}") from exc
                log.warning("%s: waiting for the database (%s)", self.describe(), describe(exc))
                time.sleep(1.0)
            except psycopg.Error as exc:
                raise ConfigurationError(f"{self.describe()}: {describe(exc)}") from exc

    def open(self, context: SinkContext) -> PostgresWriter:
        if self._shape is None:
            self.check(context.exactly_once)
        shape = self._shape
        settings = WriterSettings(mode=self.mode, batch_rows=self.batch_rows,
                                  recovery_timeout_s=self.recovery_timeout_s,
                                  commit_timeout_s=self.commit_timeout_s, key_of=_key_mapper(shape),
                                  row_of=_row_mapper(shape, self.value))
        idle_s = context.transaction_timeout_s
        return PostgresWriter(settings, shape, context, lambda: self.connection(
            f"eos {context.job} {context.task}", lock_timeout_s=self.lock_timeout_s, idle_in_transaction_s=idle_s))

    # -- connections --------------------------------------------------------------------

    def connection(self, name: str, *, lock_timeout_s: float | None = None,
                   idle_in_transaction_s: float | None = None) -> psycopg.Connection:
        """An autocommit connection (the writer sends BEGIN itself) with keepalives, so a
        lost server is noticed in seconds, and the sink's timeouts: a lock held by another
        writer fails the statement instead of stalling the worker, and a transaction left
        open by a process that froze is ended by the server, releasing its locks."""
        conn = self._connect(self.dsn, autocommit=True, application_name=name[:63], connect_timeout=5,
                             keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                             tcp_user_timeout=10_000)
        if lock_timeout_s is not None:
            conn.execute("SELECT set_config('lock_timeout', %s, false), "
                         "set_config('idle_in_transaction_session_timeout', %s, false)",
                         (f"{int(lock_timeout_s * 1000)}ms", f"{int((idle_in_transaction_s or 0) * 1000)}ms"))
        return conn


def _key_mapper(shape: TableShape) -> Callable[[Any], tuple]:
    columns = shape.key
    if not columns:
        return lambda key: ()
    if len(columns) == 1:
        return lambda key: (key,)

    def several(key: Any) -> tuple:
        values = tuple(key[c] for c in columns) if isinstance(key, Mapping) else tuple(key)
        if len(values) != len(columns):
            raise ValueError(f"the record key {key!r} does not give the {len(columns)} key columns {columns}")
        return values

    return several


def _row_mapper(shape: TableShape, value: Callable[[Any], Any] | None) -> Callable[[Any], tuple]:
    """The value columns of a record value. On the hot path: a tuple of the right length
    (what a `value` function usually returns) goes through as it is."""
    columns = shape.values
    count = len(columns)

    def from_mapping(mapped: Any) -> tuple:
        try:
            return tuple([mapped[c] for c in columns])
        except KeyError as missing:
            raise ValueError(f"the row for {shape.qualified} has no value for column {missing}") from None

    def checked(mapped: Any) -> tuple:
        if isinstance(mapped, (dict, Mapping)):
            return from_mapping(mapped)
        values = tuple(mapped)
        if len(values) != count:
            raise ValueError(f"the row for {shape.qualified} has {len(values)} values, not {count} ({columns})")
        return values

    if value is None:
        return lambda record_value: from_mapping(record_value) if type(record_value) is dict else checked(record_value)

    def row(record_value: Any) -> tuple:
        mapped = value(record_value)
        if type(mapped) is tuple and len(mapped) == count:
            return mapped
        return checked(mapped)

    return row


__all__ = ["PostgresSink", "INSERT", "UPSERT"]
