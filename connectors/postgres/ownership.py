"""Who owns a task's sink, and what its prepared transactions become.

Each (job, sink, task) has one row in `eos_sink_progress`: the incarnation token of the
process that owns it and the last checkpoint committed there. Every prepared transaction
updates that row where the owner is its own process, so

- a process that lost the task (frozen, then woken after another took over) finds the row
  claimed by someone else and prepares nothing (SinkFencedError), and
- at most one prepared transaction of a task exists at a time: it holds the row's lock
  until it is committed or rolled back, and any other would wait for it.

Recovery therefore decides by checkpoint id alone: a prepared transaction whose
checkpoint is the committed one (or older) was part of a completed checkpoint and is
committed; one after it never completed and is rolled back. Then the new owner claims
the row, which waits for (and so orders after) anything a predecessor still prepared.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from connectors.postgres.table import TableShape
from connectors.two_phase import SinkContext, checkpoint_of
from eos.errors import SinkFencedError

log = logging.getLogger(__name__)

# A prepared transaction that is gone by the time it is resolved was resolved by someone
# else (the process that prepared it, committing right after its checkpoint).
_GONE = psycopg.errors.UndefinedObject


def prepared_transactions(conn: psycopg.Connection, prefix: str) -> list[tuple[str, int]]:
    """This task's prepared transactions in this database, as (name, checkpoint id)."""
    rows = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                        "AND starts_with(gid, %s)", (prefix + ":",)).fetchall()
    found = [(gid, checkpoint_of(gid, prefix)) for (gid,) in rows]
    return sorted((gid, n) for gid, n in found if n is not None)


def resolve(conn: psycopg.Connection, prefix: str, committed: int, where: str) -> None:
    """Commits what was prepared for the committed checkpoint (or before), rolls back the
    rest. Runs on a connection outside any transaction."""
    for gid, n in prepared_transactions(conn, prefix):
        commit = n <= committed
        statement = "COMMIT PREPARED {}" if commit else "ROLLBACK PREPARED {}"
        try:
            conn.execute(sql.SQL(statement).format(sql.Literal(gid)))
        except _GONE:
            continue
        if commit:
            log.info("%s: committed checkpoint %d's prepared transaction %r, whose Kafka commit completed before "
                     "the database commit could be made", where, n, gid)
        else:
            log.info("%s: rolled back prepared transaction %r: checkpoint %d never completed (the committed one is "
                     "%d)", where, gid, n, committed)


def claim(conn: psycopg.Connection, shape: TableShape, context: SinkContext, committed: int, where: str) -> None:
    """Makes this process the task's owner. A checkpoint recorded there past the
    committed one means the group's offsets went back (a reset, an older savepoint):
    the rows of the checkpoints in between are in the table and their input is read
    again."""
    row = conn.execute(sql.SQL(
        "INSERT INTO {} (job, sink, task, owner) VALUES (%s, %s, %s, %s) ON CONFLICT (job, sink, task) "
        "DO UPDATE SET owner = EXCLUDED.owner, updated_at = now() RETURNING checkpoint_id").format(
            shape.progress_ident()), (context.job, context.sink, context.task, context.owner)).fetchone()
    if row[0] > committed:
        log.warning("%s: the table holds the rows of checkpoint %d, but the committed offsets name checkpoint %d "
                    "(offsets reset, or resumed from an older savepoint): the input in between is read again and "
                    "its rows are written again", where, row[0], committed)


def record_progress(conn: psycopg.Connection, shape: TableShape, context: SinkContext, checkpoint_id: int,
                    where: str) -> None:
    """In the epoch's transaction, just before it is prepared: the checkpoint it belongs
    to, where this process still owns the task."""
    updated = conn.execute(sql.SQL(
        "UPDATE {} SET checkpoint_id = %s, updated_at = now() WHERE job = %s AND sink = %s AND task = %s "
        "AND owner = %s").format(shape.progress_ident()),
        (checkpoint_id, context.job, context.sink, context.task, context.owner)).rowcount
    if updated != 1:
        raise SinkFencedError(f"{where}: another process has claimed this task's sink since this one restored it; "
                              f"checkpoint {checkpoint_id} is not prepared here")
