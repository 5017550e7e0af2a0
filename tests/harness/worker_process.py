"""Runs `eos run` as a real OS process, so tests can SIGKILL, SIGSTOP and restart it.

Workers start the way users start them: the installed `eos` command, from a working
directory outside the repository (the test's own directory), with job files named by path.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The console script pip installed beside this interpreter (.venv/bin/eos).
EOS = [str(Path(sys.executable).with_name("eos"))]
# Where commands run when a test names no directory: anywhere but the repository.
OUTSIDE_REPO = Path(tempfile.gettempdir())


@dataclass
class WorkerSpec:
    bootstrap: str
    group: str
    state_dir: Path
    storage: str
    params: dict[str, str]
    job: Path = REPO / "examples" / "running_sum.py"
    worker_id: str = "w1"
    interval: str = "500ms"
    guarantee: str = "exactly-once"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # None: the product's default (static, so a worker restarted at once gets its
    # partitions back at once); "--dynamic-membership" for tests of that mode.
    membership: str | None = None
    # A command the worker runs under, e.g. `ip netns exec HOST` to run it on a host of its own.
    wrap: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        argv = [*self.wrap, *EOS, "run", str(self.job), "--bootstrap-servers", self.bootstrap, "--group", self.group,
                "--state-dir", str(self.state_dir), "--checkpoint-storage", self.storage,
                "--checkpoint-interval", self.interval, "--worker-id", self.worker_id,
                "--processing-guarantee", self.guarantee, *self.extra_args]
        if self.membership:
            argv.append(self.membership)
        for name, value in self.params.items():
            argv += ["-p", f"{name}={value}"]
        return argv


class WorkerProcess:
    # Every process started by the current test, so a failing test leaves none behind.
    started: list[WorkerProcess] = []

    def __init__(self, spec: WorkerSpec, log_path: Path, fault: str | None = None) -> None:
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        env.pop("EOS_FAULT", None)
        if fault:
            env["EOS_FAULT"] = fault
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log_start = self._log.tell()  # slots reuse their log file across incarnations
        self.proc = subprocess.Popen(spec.argv(), cwd=log_path.parent, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        WorkerProcess.started.append(self)

    @classmethod
    def kill_leftovers(cls) -> None:
        for process in cls.started:
            if process.alive():
                os.kill(process.pid, signal.SIGCONT)  # a frozen one must wake to die cleanly
                process.kill()
        cls.started.clear()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self._log.close()

    def running(self) -> bool:
        """Whether this incarnation logged its start: it handles SIGTERM from then on."""
        return " started: stages " in self.log_text()

    def wait_assigned(self, timeout: float = 60) -> None:
        """Until this incarnation holds its first partitions (before that, a SIGTERM may
        find the process still starting, before it handles the signal)."""
        wait_for(lambda: "assigned" in self.log_text() or not self.alive(), timeout, 0.2,
                 lambda: f"the worker to get partitions:\n{self.log_tail()}")
        assert self.alive(), self.log_tail()

    def log_text(self) -> str:
        """This incarnation's log so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kill_at_random(start: Callable[[int], WorkerProcess], kills: int, seed: int,
                   delay_s: tuple[float, float] = (2.0, 4.0)) -> None:
    """Starts a worker (`start(i)`) and SIGKILLs it `delay_s` (2 to 4 s) after it got its
    partitions, `kills` times: kills that land at random moments of processing and
    checkpointing. Counted from the start, a loaded machine's start-up could take all of
    it, and a worker killed before it processed anything tests nothing."""
    rng = random.Random(seed)
    for i in range(kills):
        worker = start(i)
        worker.wait_assigned()
        time.sleep(rng.uniform(*delay_s))
        assert worker.alive(), f"worker died on its own:\n{worker.log_tail()}"
        worker.kill()


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str | Callable[[], str] = "condition") -> None:
    """`what` may be a function, to describe the state at the moment of giving up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")
