"""PostgreSQL's errors, sorted by whose fault they are.

A row the table refuses (SQLSTATE class 22, data exception: a value out of range or of
the wrong form; class 23, integrity: a constraint, a duplicate key) is that row's record's
fault and goes to the job's error policy. Anything else (the connection lost, a lock or
statement timed out, the disk full, the server shutting down, a permission revoked) ends
the epoch's transaction, so the checkpoint that would have committed it fails and the
work is redone; the message says which.
"""

from __future__ import annotations

import psycopg

ROW_FAULT_CLASSES = ("22", "23")


def row_fault(exc: psycopg.Error) -> bool:
    return (exc.sqlstate or "")[:2] in ROW_FAULT_CLASSES


def describe(exc: BaseException) -> str:
    """The server's message and SQLSTATE (or the client's, for a lost connection)."""
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        lines = str(exc).strip().splitlines()
        text = diag.message_primary or (lines[0] if lines else type(exc).__name__)
        if diag.constraint_name:
            text += f" (constraint {diag.constraint_name})"
        return f"{text} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else f"{text} (connection)"
    return f"{type(exc).__name__}: {exc}"
