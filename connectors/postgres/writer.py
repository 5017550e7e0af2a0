"""One task's two-phase participant for one PostgreSQL table (connectors/two_phase.py).

During the epoch rows are buffered: in upsert mode the last change per key (a tombstone
is a delete), in insert mode every row. A full buffer, and the checkpoint's prepare, write
it in one statement (or one COPY) inside the epoch's transaction, which `prepare` ends
with `PREPARE TRANSACTION 'eos:{job}:{sink}:{task}:{checkpoint}'` and `commit` with
`COMMIT PREPARED` once the Kafka commit succeeded. `recover` settles whatever a crash
left prepared (connectors/postgres/ownership.py).

Failures never leave a half-written epoch behind: a refused row goes to the error policy
and the rest of its batch is kept (each batch runs under a savepoint); any other error
ends the epoch's transaction and is raised at the next prepare, so the checkpoint fails
and its work is redone. A commit that cannot be made after its checkpoint completed is
kept pending, which makes the task take part in the next checkpoint, whose failure
rewinds it and so runs `recover`, which commits it.

Under at-least-once every batch commits on its own, and nothing is prepared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors.postgres.errors import describe, row_fault
from connectors.postgres.ownership import claim, record_progress, resolve
from connectors.postgres.table import UPSERT, TableShape, copy_sql, delete_sql, insert_sql, upsert_sql
from connectors.two_phase import CommitDeadline, SinkContext
from eos.errors import RecordError, SinkUnavailableError

log = logging.getLogger(__name__)

Connect = Callable[[], psycopg.Connection]
Row = tuple
_GONE = psycopg.errors.UndefinedObject


@dataclass(frozen=True)
class WriterSettings:
    mode: str
    batch_rows: int
    # How long recover (and a commit after its checkpoint completed) keeps trying to
    # reach the database before giving up.
    recovery_timeout_s: float
    commit_timeout_s: float
    key_of: Callable[[Any], Row]
    row_of: Callable[[Any], Row]


class PostgresWriter:
    def __init__(self, settings: WriterSettings, shape: TableShape, context: SinkContext, connect: Connect,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.shape = shape
        self.context = context
        self.connect = connect
        self.sleep = sleep
        self.where = f"PostgreSQL sink {context.sink!r} (table {shape.qualified}, task {context.task})"
        self.prefix = context.transaction_prefix()
        self.upsert = settings.mode == UPSERT
        self.keyed = bool(shape.key)
        self.conn: psycopg.Connection | None = None
        self.in_transaction = False
        # A second connection, for settling a prepared transaction while the next epoch's
        # is open on the first (prepared transactions belong to the server, not a session).
        self.settling: psycopg.Connection | None = None
        # key -> (row, or None for a delete; the Kafka record it came from): upsert mode
        self.changes: dict[Row, tuple[Row | None, Any]] = {}
        # insert mode: the rows, and the Kafka record each came from
        self.rows: list[Row] = []
        self.sources: list[Any] = []
        self.committed = 0  # the last checkpoint known committed (from recover or commit)
        self.prepared: str | None = None  # a prepared transaction not committed yet
        self.broken: SinkUnavailableError | None = None
        self._upsert, self._delete, self._insert = upsert_sql(shape), delete_sql(shape), insert_sql(shape)
        self._copy = copy_sql(shape)
        # The hot path: one closure per writer over the buffers, which are never replaced.
        self.write = self._writer()

    # -- the epoch ---------------------------------------------------------------------

    def begin(self) -> None:
        """Nothing to do until the first batch: the transaction starts with it."""

    def write(self, key: Any, value: Any, source: Any) -> None:  # replaced per instance by _writer()
        raise NotImplementedError

    def _writer(self) -> Callable[[Any, Any, Any], None]:
        key_of, row_of, batch = self.settings.key_of, self.settings.row_of, self.settings.batch_rows
        changes, rows, full = self.changes, self.rows, self._batch_full
        if self.upsert:
            def write_change(key: Any, value: Any, source: Any) -> None:
                k = key_of(key)
                changes[k] = (None if value is None else k + row_of(value), source)
                if len(changes) >= batch:
                    full()

            return write_change
        append, keep = rows.append, self.sources.append
        keyed, table = self.keyed, self.shape.qualified

        def write_row(key: Any, value: Any, source: Any) -> None:
            if value is None:
                raise ValueError(f"a tombstone (null value) for key {key!r} has no row to insert into {table} "
                                 "(insert mode; upsert mode deletes the key's row)")
            append(key_of(key) + row_of(value) if keyed else row_of(value))
            keep(source)
            if len(rows) >= batch:
                full()

        return write_row

    def _batch_full(self) -> None:
        at = f"the epoch after checkpoint {self.committed}"
        if self.broken is not None:
            self._clear()  # the epoch cannot commit; the next prepare says why
            return
        try:
            self._flush(at)
        except psycopg.Error as exc:
            self._break(exc, at)

    def prepare(self, checkpoint_id: int) -> None:
        if self.broken is not None:
            raise self.broken
        at = f"checkpoint {checkpoint_id}"
        try:
            self._flush(at)
            if self.in_transaction:
                conn = self.conn
                record_progress(conn, self.shape, self.context, checkpoint_id, self.where)
                name = self.context.transaction_name(checkpoint_id)
                conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(name)))
                self.in_transaction = False
                self.prepared = name
        except psycopg.Error as exc:
            raise self._break(exc, at) from exc
        except BaseException:
            self._rollback()
            raise

    def commit(self, checkpoint_id: int, deadline: CommitDeadline) -> None:
        """After the Kafka commit: the checkpoint is complete whatever happens here, so a
        failure is kept for the task's next recovery rather than raised."""
        name = self.prepared
        if name is None:
            self.committed = checkpoint_id
            return
        for delay in _backoff():
            try:
                self._outside_epoch().execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(name)))
                break
            except _GONE:
                log.info("%s: prepared transaction %r was committed by a recovery meanwhile", self.where, name)
                break
            except psycopg.Error as exc:
                self._drop_settling()
                remaining = deadline.remaining(self.settings.commit_timeout_s)
                if remaining <= 0:
                    self.broken = SinkUnavailableError(
                        f"{self.where}: checkpoint {checkpoint_id} completed, but its prepared transaction {name!r} "
                        f"could not be committed within the checkpoint's commit timeout "
                        f"({self.settings.commit_timeout_s:g}s from its sinks' first failed commit): {describe(exc)}; "
                        "the task's recovery commits it")
                    log.error("%s", self.broken)
                    return
                delay = min(delay, remaining)
                log.warning("%s: committing %r after checkpoint %d completed failed (%s); retrying in %.1fs",
                            self.where, name, checkpoint_id, describe(exc), delay)
                self.sleep(delay)
        self.prepared = None
        self.committed = checkpoint_id

    def abort(self) -> None:
        """The checkpoint will not commit (it failed before its Kafka commit was made):
        drops the epoch's writes and rolls back what was prepared for it. A rollback
        that cannot be made now is left to `recover`, which makes it."""
        self._drop_epoch()
        name, self.prepared = self.prepared, None
        if name is None:
            return
        try:
            self._connection().execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(name)))
        except psycopg.Error as exc:
            log.warning("%s: could not roll back %r now (%s); the task's recovery does", self.where, name,
                        describe(exc))
            self._drop_connection()

    def recover(self, committed_checkpoint_id: int) -> None:
        self._drop_epoch()
        c = committed_checkpoint_id
        deadline = time.monotonic() + self.settings.recovery_timeout_s
        for delay in _backoff():
            try:
                conn = self._connection()
                if self.context.exactly_once:
                    resolve(conn, self.prefix, c, self.where)
                    claim(conn, self.shape, self.context, c, self.where)
                break
            except psycopg.Error as exc:
                self._drop_connection()
                if time.monotonic() + delay > deadline:
                    raise SinkUnavailableError(
                        f"{self.where}: cannot recover at checkpoint {c} within "
                        f"{self.settings.recovery_timeout_s:g}s: {describe(exc)}") from exc
                log.warning("%s: waiting for PostgreSQL to recover at checkpoint %d (%s); retrying in %.1fs",
                            self.where, c, describe(exc), delay)
                self.sleep(delay)
        self.committed = c
        self.prepared = None
        self.broken = None

    @property
    def pending(self) -> bool:
        return bool(self.changes or self.rows or self.in_transaction or self.prepared or self.broken)

    def close(self) -> None:
        """What was prepared stays: whether its checkpoint committed may be unknown here,
        and the task's next owner decides it from the committed offsets."""
        self._drop_epoch()
        self._drop_connection()
        self._drop_settling()

    def _drop_epoch(self) -> None:
        self._clear()
        self._rollback()

    def _clear(self) -> None:
        self.changes.clear()
        self.rows.clear()
        self.sources.clear()

    # -- writing a batch ---------------------------------------------------------------

    def _flush(self, at: str) -> None:
        if not self.changes and not self.rows:
            return
        conn = self._connection()
        if self.context.exactly_once:
            if not self.in_transaction:
                conn.execute("BEGIN")
                self.in_transaction = True
            self._write_batch(conn, at)
        else:
            with conn.transaction():
                self._write_batch(conn, at)

    def _write_batch(self, conn: psycopg.Connection, at: str) -> None:
        if self.upsert:
            changes = dict(self.changes)
            self.changes.clear()
            deletes = [(key, source) for key, (row, source) in changes.items() if row is None]
            upserts = [(row, source) for row, source in changes.values() if row is not None]
            if deletes:
                self._statement(conn, self._delete, deletes, at)
            if upserts:
                self._statement(conn, self._upsert, upserts, at)
        else:
            rows, sources = list(self.rows), list(self.sources)
            self.rows.clear()
            self.sources.clear()
            try:
                with conn.transaction(), conn.cursor().copy(self._copy) as copy:
                    write_row = copy.write_row
                    for row in rows:
                        write_row(row)
            except psycopg.Error as exc:
                if not row_fault(exc):
                    raise
                self._one_by_one(conn, self._insert, list(zip(rows, sources)), at)

    def _statement(self, conn: psycopg.Connection, statement: sql.Composable, items: list, at: str) -> None:
        """One statement for the whole batch, under a savepoint: if a row is refused, the
        rows are tried one by one to find it."""
        try:
            with conn.transaction():
                conn.execute(statement, [list(column) for column in zip(*(row for row, _ in items))])
        except psycopg.Error as exc:
            if not row_fault(exc):
                raise
            self._one_by_one(conn, statement, items, at)

    def _one_by_one(self, conn: psycopg.Connection, statement: sql.Composable, items: list, at: str) -> None:
        for row, source in items:
            try:
                with conn.transaction():
                    conn.execute(statement, [[value] for value in row])
            except psycopg.Error as exc:
                if not row_fault(exc):
                    raise
                self._reject(row, source, exc, at)

    def _reject(self, row: Row, source: Any, exc: psycopg.Error, at: str) -> None:
        if self.shape.key:
            key = row[:len(self.shape.key)]
            what = f"the row for key {key[0] if len(key) == 1 else key!r}"
        else:
            raw = source.key()
            what = f"the row {row!r} (record key {raw.decode(errors='replace') if raw else None!r})"
        reason = f"{self.where} refused {what} in {at}: {describe(exc)}"
        self.context.reject(RecordError(reason, topic=source.topic(), partition=source.partition(),
                                        offset=source.offset(), operator=self.context.sink, cause=exc), source)

    # -- the connection ----------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            self._drop_connection()
            conn = self.conn = self.connect()
        return conn

    def _outside_epoch(self) -> psycopg.Connection:
        """A connection with no transaction of this writer's open: the epoch's own while
        its transaction has not begun, else the settling one."""
        if not self.in_transaction:
            return self._connection()
        conn = self.settling
        if conn is None or conn.closed or conn.broken:
            self._drop_settling()
            conn = self.settling = self.connect()
        return conn

    def _drop_settling(self) -> None:
        """Closes whichever connection settles prepared transactions now: the settling
        one, or the epoch's while it has no transaction open."""
        if self.settling is not None:
            conn, self.settling = self.settling, None
            try:
                conn.close()
            except psycopg.Error:
                pass
        elif not self.in_transaction:
            self._drop_connection()

    def _break(self, exc: psycopg.Error, at: str) -> SinkUnavailableError:
        """The epoch's transaction is lost: remembered, raised at the next prepare."""
        self.broken = SinkUnavailableError(f"{self.where}: {at} cannot be committed: {describe(exc)}; the "
                                           f"checkpoint fails and the task's work since checkpoint {self.committed} "
                                           "is redone")
        log.warning("%s", self.broken)
        self._clear()
        self._rollback()
        return self.broken

    def _rollback(self) -> None:
        conn = self.conn
        if conn is None:
            return
        if self.in_transaction or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                self._drop_connection()
        self.in_transaction = False

    def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        self.in_transaction = False
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass


def _backoff():
    """0.2 s, 0.4 s, ... up to 2 s, for ever; callers bound it by their deadline."""
    delay = 0.2
    while True:
        yield delay
        delay = min(2.0, delay * 2)
