"""A real browser for status pages: Debian's headless Chromium, driven through its
command line (--screenshot, --dump-dom), each run with a fresh profile."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--disable-dev-shm-usage"]


def chromium_binary() -> str:
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("no chromium on PATH: apt-get install chromium (Debian); .ci/run installs it")


def _run(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="eos-chromium-") as profile:
        return subprocess.run([chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, timeout=timeout)


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1100) -> Path:
    result = _run([f"--window-size={width},{height}", f"--screenshot={path}", url])
    if not path.exists() or path.stat().st_size == 0:
        raise RuntimeError(f"chromium made no screenshot of {url} (exit {result.returncode}): "
                           f"{result.stderr.decode(errors='replace')[-2000:]}")
    return path


def dump_dom(url: str) -> str:
    """The page's DOM after it loaded, as the browser built it."""
    result = _run(["--dump-dom", url])
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"chromium could not load {url} (exit {result.returncode}): "
                           f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode()


class TableRows(HTMLParser):
    """Rows of the table with a given id: each row as (its class attribute, cell texts)."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.rows: list[tuple[str, list[str]]] = []
        self._depth = 0  # > 0 while inside the wanted table
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._row_class = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "table" and (self._depth or attributes.get("id") == self.table_id):
            self._depth += 1
        elif self._depth and tag == "tr":
            self._row, self._row_class = [], attributes.get("class") or ""
        elif self._depth and tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._depth:
            self._depth -= 1
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append((self._row_class, self._row))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str, table_id: str) -> list[tuple[str, list[str]]]:
    parser = TableRows(table_id)
    parser.feed(html)
    return parser.rows
