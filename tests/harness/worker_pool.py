"""Several workers of one job, started, killed, stopped and replaced by slot name, and a
driver that does so at random: the multi-worker chaos of the scale-out tests.

A slot is a worker id (`w0`, `w1`, ...). A slot that is down can be restarted; a
retired slot (scale-down) never comes back. Every exit the pool did not cause is a
failure, reported with the worker's log.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.scenario import RunningSum
from tests.harness.worker_process import WorkerProcess, wait_for

log = logging.getLogger(__name__)


@dataclass
class Slot:
    name: str
    process: WorkerProcess | None = None
    retired: bool = False
    incarnations: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()


@dataclass
class WorkerPool:
    scenario: RunningSum
    # Each slot gets a state directory of its own, as on separate machines.
    separate_state_dirs: bool = False
    spec: dict = field(default_factory=dict)
    slots: dict[str, Slot] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def start(self, name: str | None = None, fault: str | None = None, **spec) -> Slot:
        name = name or f"w{len(self.slots)}"
        slot = self.slots.setdefault(name, Slot(name))
        assert not slot.running and not slot.retired, f"slot {name} cannot be started"
        overrides = {"membership": None, **self.spec, **spec}  # membership is what these tests are about
        if self.separate_state_dirs:
            overrides["state_dir"] = self.scenario.workdir / f"state-{name}"
        slot.process = self.scenario.start_worker(fault=fault, worker_id=name, **overrides)
        slot.incarnations += 1
        return slot

    def live(self) -> list[str]:
        return sorted(name for name, slot in self.slots.items() if slot.running)

    def down(self) -> list[str]:
        return sorted(name for name, slot in self.slots.items() if not slot.running and not slot.retired)

    def kill(self, name: str) -> None:
        self.slots[name].process.kill()

    def terminate(self, name: str) -> None:
        """SIGTERM once the worker has installed its handlers; it must exit 0."""
        process = self.slots[name].process
        wait_for(lambda: "started: stages" in process.log_text() or not process.alive(), 60, 0.1,
                 f"worker {name} to start")
        code = process.terminate(timeout=90)
        assert code == 0, f"worker {name} exited with {code} on SIGTERM:\n{process.log_tail()}"

    def check_alive(self) -> None:
        """Fails if a worker the pool did not stop has exited."""
        for name, slot in self.slots.items():
            process = slot.process
            if process is not None and process.proc.returncode is None and not process.alive():
                raise AssertionError(
                    f"worker {name} exited on its own with {process.proc.returncode}:\n{process.log_tail(60)}")

    def ensure_live(self, count: int) -> None:
        for name in self.down():
            if len(self.live()) >= count:
                return
            self.start(name)
        while len(self.live()) < count:
            self.start()

    def stop_all(self) -> None:
        self.check_alive()
        for name in self.live():
            self.terminate(name)

    def kill_all(self) -> None:
        for slot in self.slots.values():
            if slot.process is not None and slot.process.alive():
                slot.process.signal(signal.SIGCONT)
                slot.process.kill()

    def log_texts(self) -> str:
        paths = sorted(Path(self.scenario.workdir).glob("*.log"))
        return "\n".join(p.read_text(errors="replace") for p in paths)


def run_chaos(pool: WorkerPool, events: int, seed: int, pause_s: tuple[float, float] = (0.8, 2.2),
              max_live: int = 5) -> list[str]:
    """`events` random membership changes, each after a random pause; at least one
    worker stays up. Returns what happened, for the failure message."""
    rng = random.Random(seed)
    history = pool.history
    for _ in range(events):
        time.sleep(rng.uniform(*pause_s))
        pool.check_alive()
        live, down = pool.live(), pool.down()
        possible = []
        if len(live) >= 2:
            possible += ["kill", "term", "remove"]
        if live:
            possible.append("kill-restart")
        if down:
            possible.append("restart")
        if len(live) < max_live:
            possible.append("add")
        kind = rng.choice(possible)
        if kind == "restart":
            name = rng.choice(down)
            pool.start(name)
        elif kind == "add":
            name = pool.start().name
        else:
            name = rng.choice(live)
            if kind in ("kill", "kill-restart"):
                pool.kill(name)
            else:
                pool.terminate(name)
            if kind == "kill-restart":
                pool.start(name)
            elif kind == "remove":
                pool.slots[name].retired = True
        history.append(f"{time.strftime('%H:%M:%S')} {kind} {name} -> live {pool.live()}")
        log.info("chaos event %d: %s", len(history), history[-1])
    return history
