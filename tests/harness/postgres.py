"""A real PostgreSQL for tests: Debian's server binaries run in a temporary directory
(initdb, pg_ctl), on a port from tests/harness/ports.py, or the server POSTGRES_DSN names.

Each test gets a database of its own on the run's server. Tests that restart the server,
fill its disk or cut it off start a private one (`PostgresServer`), which they may stop
and start at will. As root (CI, this machine), the server runs as the `postgres` user:
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.harness.ports import free_port

DSN_ENV = "POSTGRES_DSN"
BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14")]
SERVER_USER = "postgres"


def server_binaries() -> Path | None:
    for directory in BIN_DIRS:
        if (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def _as_server_user() -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []


class PostgresServer:
    """One PostgreSQL server in a directory of its own. `settings` are `-c` options."""

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None,
                 root: Path | None = None) -> None:
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
        self.bin = binaries
        self.port = port or free_port()
        self.root = Path(root or tempfile.mkdtemp(prefix="eos-test-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = {"max_prepared_transactions": "64", "max_connections": "200", "fsync": "off",
                         "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "32MB",
                         **(settings or {})}
        self.user = SERVER_USER if os.geteuid() == 0 else getpass.getuser()
        self._initdb()

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.root.chmod(0o755)
        self._chown(self.root)
        subprocess.run([*_as_server_user(), str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                        "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                       check=True, capture_output=True, timeout=120)

    def _options(self) -> str:
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.root}"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        return " ".join(options)

    def start(self) -> None:
        subprocess.run([*_as_server_user(), str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", self._options(), "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*_as_server_user(), str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                        "-t", "60", "stop"], check=False, capture_output=True, timeout=90)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"


def dsn_with(dsn: str, **params: str) -> str:
    """`dsn` with some parameters replaced (conninfo or URL form)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, **params)


def create_database(admin_dsn: str, prefix: str = "eos") -> str:
    """A fresh database on the server `admin_dsn` reaches; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return dsn_with(admin_dsn, dbname=name)


@contextlib.contextmanager
def running_postgres(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    server = PostgresServer(settings=settings)
    server.start()
    try:
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def session_postgres() -> Iterator[str]:
    """The admin DSN of the run's server: POSTGRES_DSN, or one started here."""
    given = os.environ.get(DSN_ENV)
    if given:
        yield given
        return
    with running_postgres() as server:
        yield server.dsn


def query(dsn: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []
