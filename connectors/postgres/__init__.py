"""The PostgreSQL sink: rows into a declared table, exactly once, through PostgreSQL's
two-phase commit (see sink.py for the user's side, writer.py for one task's)."""

from connectors.postgres.sink import PostgresSink

__all__ = ["PostgresSink"]
