"""The table a PostgreSQL sink writes: declared by the job, checked (or created) once at
start against the catalog, and the statements that write it in batches.

Rows travel as one array per column: upserts and deletes are one statement over
`unnest(...)` per batch, appends are one COPY, so a batch costs one round trip whatever
its size. The catalog's own type names are used for the arrays, so what the table says
is what the values are cast to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from eos.errors import ConfigurationError

INSERT, UPSERT = "insert", "upsert"
MODES = (INSERT, UPSERT)
# Where each task's owner and last committed checkpoint are kept, beside the table.
PROGRESS_TABLE = "eos_sink_progress"


@dataclass(frozen=True)
class TableShape:
    """The table as the catalog describes it: columns in the order rows carry them (the
    key columns first), with their types."""

    schema: str
    name: str
    key: tuple[str, ...]
    values: tuple[str, ...]
    types: tuple[str, ...]  # per column of `columns`

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key + self.values

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def progress_ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, PROGRESS_TABLE)


def split_name(table: str) -> tuple[str, str]:
    schema, sep, name = table.rpartition(".")
    return (schema if sep else "public"), name


def declare(conn: psycopg.Connection, table: str, columns: Mapping[str, str] | Sequence[str],
            key: Sequence[str], mode: str, create: bool) -> TableShape:
    """Checks the table against its declaration, creating it (and the progress table)
    if missing and the declaration gives types. Returns its shape."""
    schema, name = split_name(table)
    declared = list(columns)
    types = dict(columns) if isinstance(columns, Mapping) else {}
    missing_key = [k for k in key if k not in declared]
    if missing_key:
        raise ConfigurationError(f"PostgreSQL sink for {schema}.{name}: key columns {missing_key} are not among "
                                 f"its columns {declared}")
    if mode == UPSERT and not key:
        raise ConfigurationError(f"PostgreSQL sink for {schema}.{name}: mode {UPSERT!r} needs key columns")
    catalog = _catalog_types(conn, schema, name)
    if not catalog:
        if not create or not types:
            raise ConfigurationError(
                f"table {schema}.{name} does not exist in {_where(conn)}; create it, or declare the column types "
                "(columns={'name': 'type', ...}) so the sink creates it")
        conn.execute(_create_sql(schema, name, declared, types, key if mode == UPSERT else ()))
        catalog = _catalog_types(conn, schema, name)
    absent = [c for c in declared if c not in catalog]
    if absent:
        raise ConfigurationError(f"table {schema}.{name} in {_where(conn)} has no column {', '.join(absent)} "
                                 f"(it has {', '.join(catalog)})")
    if mode == UPSERT and not _has_unique_index(conn, schema, name, key):
        raise ConfigurationError(
            f"table {schema}.{name} has no primary key or unique index on exactly ({', '.join(key)}): an upsert "
            "needs one to find the row a key names")
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (job text NOT NULL, sink text NOT NULL, task text NOT NULL, "
        "owner text NOT NULL, checkpoint_id bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL "
        "DEFAULT now(), PRIMARY KEY (job, sink, task))").format(sql.Identifier(schema, PROGRESS_TABLE)))
    values = tuple(c for c in declared if c not in key)
    return TableShape(schema, name, tuple(key), values, tuple(catalog[c] for c in (*key, *values)))


def _where(conn: psycopg.Connection) -> str:
    info = conn.info
    return f"database {info.dbname!r} at {info.host}:{info.port}"


def _catalog_types(conn: psycopg.Connection, schema: str, name: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, name)).fetchall()
    return dict(rows)


def _has_unique_index(conn: psycopg.Connection, schema: str, name: str, key: Sequence[str]) -> bool:
    rows = conn.execute(
        "SELECT array_agg(a.attname::text) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL "
        "GROUP BY i.indexrelid", (schema, name)).fetchall()
    return any(set(columns) == set(key) and len(columns) == len(key) for (columns,) in rows)


def _create_sql(schema: str, name: str, declared: list[str], types: Mapping[str, str],
                primary_key: Sequence[str]) -> sql.Composable:
    parts = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in declared]
    if primary_key:
        parts.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, primary_key))))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(sql.Identifier(schema, name),
                                                               sql.SQL(", ").join(parts))


def _arrays(shape: TableShape, columns: Sequence[str]) -> sql.Composable:
    types = dict(zip(shape.columns, shape.types))
    return sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(types[c])) for c in columns)


def _names(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def upsert_sql(shape: TableShape) -> sql.Composable:
    """One statement per batch: rows as arrays per column; a key's row is replaced."""
    if shape.values:
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in shape.values))
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) {}").format(
        shape.ident(), _names(shape.columns), _arrays(shape, shape.columns), _names(shape.key), action)


def insert_sql(shape: TableShape) -> sql.Composable:
    """Appends rows given as arrays per column (used row by row to find a refused row)."""
    return sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({})").format(
        shape.ident(), _names(shape.columns), _arrays(shape, shape.columns))


def delete_sql(shape: TableShape) -> sql.Composable:
    """Deletes the rows of the keys given as arrays per key column (tombstones)."""
    alias = sql.Identifier("eos_deleted")
    match = sql.SQL(" AND ").join(sql.SQL("t.{0} = {1}.{0}").format(sql.Identifier(c), alias) for c in shape.key)
    return sql.SQL("DELETE FROM {} AS t USING unnest({}) AS {} ({}) WHERE {}").format(
        shape.ident(), _arrays(shape, shape.key), alias, _names(shape.key), match)


def copy_sql(shape: TableShape) -> sql.Composable:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(shape.ident(), _names(shape.columns))
