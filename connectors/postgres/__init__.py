"""The PostgreSQL sink: rows into a declared table, exactly once, through PostgreSQL's
two-phase commit (see sink.py for the user's side, writer.py for one task's)."""

try:
    import psycopg  # noqa: F401
except ImportError as missing:  # the optional dependency
    raise ImportError("the PostgreSQL sink needs psycopg 3: pip install 'eos[postgres]'") from missing

from connectors.postgres.sink import PostgresSink

__all__ = ["PostgresSink"]
