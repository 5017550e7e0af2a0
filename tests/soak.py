"""`make soak`: minutes of continuous input while workers are SIGKILLed, stopped,
frozen and replaced, and the broker itself is restarted; then the oracle.

Runs against a broker of its own (it restarts it). Prints records in, out, lost,
duplicated and the faults survived, and writes them to docs/soak/result.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.local_kafka import BrokerSettings, LocalBroker
from tests.harness.ports import free_port
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import WorkerProcess, wait_for
from tests.harness.workload import make_orders, produce_orders

REPO = Path(__file__).resolve().parents[1]
SLOTS = ("w1", "w2")
DEFAULT_WEIGHTS = {"sigkill": 5, "sigterm": 2, "zombie": 2, "twin": 1, "broker_restart": 1}
# Exit codes of `eos run` the soak expects from the processes it wrongs.
EXIT_REPLACED, EXIT_DUPLICATE = 3, 5


class Soak:
    def __init__(self, minutes: float, rate: int, seed: int, workdir: Path,
                 weights: dict[str, int] | None = None) -> None:
        self.deadline = time.monotonic() + minutes * 60
        self.rate = rate
        self.rng = random.Random(seed)
        self.weights = weights or DEFAULT_WEIGHTS
        self.broker = LocalBroker(BrokerSettings(port=free_port(), controller_port=free_port(),
                                                 data_dir=workdir / "kafka"))
        self.broker.start()
        self.scenario = RunningSum(self.broker.bootstrap, workdir / "run", records=0, users=500)
        self.workers: dict[str, WorkerProcess] = {}
        self.faults: dict[str, int] = dict.fromkeys(DEFAULT_WEIGHTS, 0)
        self.produced = 0
        self.unexpected_exits: list[str] = []
        self.hung: list[str] = []  # workers that had to be killed because they did not exit
        self._stop_feeding = threading.Event()

    def feed(self) -> None:
        """Orders at a steady rate until told to stop; survives the broker's restarts."""
        next_id = 0
        while not self._stop_feeding.is_set():
            batch = make_orders(self.rate // 4, users=500, seed=next_id, start_id=next_id)
            try:
                produce_orders(self.broker.bootstrap, self.scenario.input, batch)
            except Exception as exc:  # noqa: BLE001 - the broker may be down; try again
                print(f"  feeder: {exc}; retrying", flush=True)
                time.sleep(1)
                continue
            self.scenario.orders.update(batch)
            next_id += len(batch)
            self.produced = next_id
            time.sleep(0.25)

    def start(self, slot: str) -> None:
        self.workers[slot] = self.scenario.start_worker(worker_id=slot, membership=None)  # the product default

    def stop_gracefully(self, slot: str, worker: WorkerProcess) -> None:
        """SIGTERM must end in a final checkpoint within two minutes, with exit code 0."""
        code = self._exit_code(slot, worker, "SIGTERM", worker.terminate)
        if code is not None and code != 0:
            self.unexpected_exits.append(f"{slot} (SIGTERM): {code}")
            print(f"  {slot} exited with {code} on SIGTERM:\n{worker.log_tail(60)}", flush=True)

    def _exit_code(self, slot: str, worker: WorkerProcess, what: str, wait: Callable[[float], int]) -> int | None:
        """The worker's exit code within two minutes; a worker that hangs instead is
        counted (and killed), so the result shows it: None."""
        try:
            return wait(120)
        except subprocess.TimeoutExpired:
            self.hung.append(f"{slot} ({what}): did not exit within 120 s")
            print(f"  {slot} ({what}) did not exit within 120 s; its stacks:\n{dump_stacks(worker)}", flush=True)
            worker.kill()
            return None

    def event(self) -> None:
        kind = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        slot = self.rng.choice(SLOTS)
        worker = self.workers[slot]
        print(f"[{time.strftime('%H:%M:%S')}] {kind} {slot if kind != 'broker_restart' else ''}", flush=True)
        if kind == "sigkill":
            worker.kill()
            time.sleep(self.rng.uniform(0, 2))
            self.start(slot)
        elif kind == "sigterm":
            self.stop_gracefully(slot, worker)
            self.start(slot)
        elif kind == "zombie":
            # Frozen until its replacement holds the slot (past the session timeout, so
            # the group has moved on): woken, it must see that it was replaced, and stop.
            worker.signal(signal.SIGSTOP)
            self.start(slot)
            replacement = self.workers[slot]
            wait_for(lambda: "assigned" in replacement.log_text() or not replacement.alive(), 90, 0.5,
                     "the replacement to take the slot")
            time.sleep(self.rng.uniform(0, 3))
            worker.signal(signal.SIGCONT)
            code = self._exit_code(slot, worker, "zombie woken", worker.wait)
            if code not in (None, EXIT_REPLACED, 0):
                self.unexpected_exits.append(f"{slot} (zombie): {code}")
                print(f"  the zombie exited with {code}:\n{worker.log_tail(10)}", flush=True)
        elif kind == "twin":
            # A second process started with a live worker's id: it must stop, saying so,
            # and the live one go on. A dynamic member checks before it joins; a static
            # one (the default) would take the slot over, and the live one exit 3.
            twin = self.scenario.start_worker(worker_id=slot, membership="--dynamic-membership")
            code = self._exit_code(slot, twin, "twin", twin.wait)
            if code not in (None, EXIT_DUPLICATE):
                self.unexpected_exits.append(f"{slot} (twin): {code}")
                print(f"  the twin exited with {code}:\n{twin.log_tail(20)}", flush=True)
        else:
            self.broker.stop()
            time.sleep(15)
            self.broker.start()
        self.faults[kind] += 1
        for name, proc in self.workers.items():  # anything that died on its own comes back
            if not proc.alive():
                code = proc.proc.returncode
                if code != EXIT_REPLACED:  # fenced by its replacement, as a zombie must be
                    self.unexpected_exits.append(f"{name}: {code}")
                    print(f"  {name} exited with {code}:\n{proc.log_tail(60)}", flush=True)
                print(f"  {name} exited with {code}; restarting", flush=True)
                self.start(name)

    def run(self) -> dict:
        feeder = threading.Thread(target=self.feed, daemon=True)
        feeder.start()
        for slot in SLOTS:
            self.start(slot)
        while time.monotonic() < self.deadline:
            time.sleep(self.rng.uniform(8, 20))
            self.event()
        self._stop_feeding.set()
        feeder.join(120)
        for slot, proc in self.workers.items():
            if not proc.alive():
                self.start(slot)
        wait_for(lambda: set(self.scenario.orders) <= self.scenario.ids_seen(), 600, 2.0, "the soak to drain")
        for slot, proc in self.workers.items():
            self.stop_gracefully(slot, proc)
        report = self.scenario.check()
        self.broker.stop()
        return {
            "records_in": len(self.scenario.orders),
            "records_out": report.outputs,
            "lost": len(report.missing_ids),
            "duplicated": report.duplicates + len(report.repeated_ids),
            "oracle_ok": report.ok,
            "oracle": report.summary(),
            "faults_survived": self.faults,
            "unexpected_exits": self.unexpected_exits,
            "hung_and_killed": self.hung,
        }


def dump_stacks(worker: WorkerProcess) -> str:
    """Where a hung worker is stuck: its Python stacks (the worker prints them on SIGUSR1)
    and, where py-spy is installed, the native frames under them too."""
    before = len(worker.log_text())
    worker.signal(signal.SIGUSR1)
    time.sleep(1)
    stacks = worker.log_text()[before:]
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy:
        native = subprocess.run([py_spy, "dump", "--native", "--pid", str(worker.pid)],
                                capture_output=True, text=True, timeout=60)
        stacks += native.stdout + native.stderr
    return stacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=2000, help="orders per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items()),
                        help="fault kinds and their weights, e.g. zombie=1,sigterm=1")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "soak" / "result.json")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="eos-soak-"))
    started = time.time()
    try:
        weights = {kind: int(weight) for kind, weight in (item.split("=") for item in args.faults.split(","))}
        unknown = set(weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            parser.error(f"unknown fault kinds {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        result = Soak(args.minutes, args.rate, args.seed, workdir, weights).run()
    finally:
        WorkerProcess.kill_leftovers()
    result.update(minutes=args.minutes, rate=args.rate, seed=args.seed,
                  duration_s=round(time.time() - started), date=time.strftime("%Y-%m-%d"),
                  machine={"cpus": __import__("os").cpu_count(), "python": platform.python_version()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["oracle_ok"] and result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
