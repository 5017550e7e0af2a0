"""A server the tests run as a process of its own: started in its own session (a Ctrl-C
meant for pytest must not kill it mid-test), ready once it answers, stopped with SIGTERM
and, past a grace period, SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_server(argv: list[str], log_path: Path, answers: Callable[[], bool], what: str, timeout: float,
                 cwd: Path | None = None, poll_s: float = 0.1) -> subprocess.Popen[bytes]:
    """Starts `argv` with its output appended to `log_path` and waits until `answers()`;
    raises with the log's tail if it exits or does not answer within `timeout`."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while not answers():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"{what} did not answer within {timeout:.0f}s:\n{log_tail(log_path)}")
        time.sleep(poll_s)
    return proc


def stop_server(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
