"""The worker's limit on glibc's malloc arenas, counted by glibc itself (malloc_info)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter: six threads each allocate while the others hold their memory, then
# glibc's own report counts its arenas (one <heap> element each).
COUNT_ARENAS = textwrap.dedent("""
    import ctypes, sys, tempfile, threading
    from service.runtime.allocator import limit_malloc_arenas
    if sys.argv[1] == "limit":
        assert limit_malloc_arenas(2)
    barrier = threading.Barrier(6)
    held = []
    def allocate():
        held.append(bytearray(200_000))
        barrier.wait()
    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for t in threads: t.start()
    for t in threads: t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        print(open(report.name).read().count("<heap nr="))
""")

glibc_only = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
                                reason="arenas are glibc's")


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", COUNT_ARENAS, mode], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out)


@glibc_only
def test_threads_that_allocate_at_once_get_arenas_of_their_own_by_default() -> None:
    assert _arenas("default") >= 4


@glibc_only
def test_a_limited_worker_process_keeps_to_two_arenas() -> None:
    assert _arenas("limit") <= 2


def test_an_operators_own_arena_setting_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.runtime.allocator import limit_malloc_arenas
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False
