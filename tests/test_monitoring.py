"""Monitoring of a real worker: a real Prometheus scrapes it, a real browser reads its
status page, and both stay right across a SIGKILL and restart.

The job is the running sum slowed to ~1000 records/s, so input fed faster than that
shows up as lag for a few seconds before it falls to 0. Each test runs its own worker.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import browser
from tests.harness.ports import free_port
from tests.harness.prometheus import PrometheusServer, prometheus_binary
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import REPO, WorkerProcess, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

THROTTLED_JOB = REPO / "tests" / "jobs" / "running_sum_throttled.py"
OUTPUT_DIR = REPO / "test-output" / "monitoring"


class Monitored:
    """A running-sum scenario whose worker serves HTTP on a known port, scraped every
    second by its own Prometheus."""

    def __init__(self, bootstrap: str, workdir: Path, records: int, throttle_ms: int = 1,
                 scraped: bool = True) -> None:
        if scraped:
            prometheus_binary()  # skips before anything starts when Prometheus is missing
        self.port = free_port()
        self.scenario = RunningSum(bootstrap, workdir, records=records, users=100, spec_overrides={
            "job": THROTTLED_JOB, "interval": "500ms", "extra_args": ["--http-port", str(self.port)]})
        self.scenario.spec_overrides["params"] = {"input": self.scenario.input,
                                                  "output": self.scenario.output,
                                                  "throttle_ms": str(throttle_ms)}
        self.prometheus = PrometheusServer(workdir / "prometheus", [f"127.0.0.1:{self.port}"]) if scraped else None
        self.selector = f'{{job="{self.scenario.group}",worker="w1"}}'
        self.worker: WorkerProcess | None = None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start_worker(self) -> WorkerProcess:
        self.worker = self.scenario.start_worker()
        return self.worker

    def wait_metric(self, promql: str, predicate, timeout: float = 90, what: str = "") -> float:
        seen: list[float | None] = [None]

        def check() -> bool:
            if self.worker is not None and not self.worker.alive():
                raise AssertionError(f"worker exited with {self.worker.proc.returncode}:\n{self.worker.log_tail()}")
            seen[0] = self.prometheus.value(promql)
            return seen[0] is not None and predicate(seen[0])

        try:
            wait_for(check, timeout, 0.5, what or promql)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last value {seen[0]}") from None
        return seen[0]

    def close(self) -> None:
        if self.worker is not None and self.worker.alive():
            self.worker.kill()
        if self.prometheus is not None:
            self.prometheus.stop()


def _get(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_prometheus_sees_checkpoints_increase_and_lag_fall_to_zero(bootstrap, tmp_path):
    """One worker fed faster than it can process until Prometheus has seen the backlog as
    lag (so the lag cannot rise and fall between two scrapes unseen), then left to drain."""
    run = Monitored(bootstrap, tmp_path, records=40_000)
    try:
        run.start_worker()
        run.wait_metric("min(up)", lambda v: v == 1, what="Prometheus to reach the worker")
        run.scenario.chunk, run.scenario.chunk_pause_s = 400, 0.2  # 2,000 records/s for a job that takes 1,000
        stop = threading.Event()
        fed = run.scenario.start_feeding_until(stop, run.scenario.orders)
        completed = f"eos_checkpoints_completed_total{run.selector}"
        first = run.wait_metric(completed, lambda v: v >= 1, what="a first completed checkpoint in Prometheus")
        run.wait_metric(completed, lambda v: v > first, what="the checkpoint count to grow")
        run.wait_metric(f"sum(eos_consumer_lag{run.selector})", lambda v: v > 0,
                        what="the backlog to show as lag in Prometheus")
        stop.set()
        run.scenario.wait_fed()
        run.scenario.wait_complete(run.worker, expected=set(fed))
        run.wait_metric(f"sum(eos_consumer_lag{run.selector})", lambda v: v == 0,
                        what="the consumer lag to fall to 0")
        partitions = run.prometheus.query(f"eos_consumer_lag{run.selector}")
        assert {r["metric"]["topic"] for r in partitions} == {run.scenario.input,
                                                              f"{run.scenario.group}-by-user-repartition"}
        assert len(partitions) == 8  # 4 input + 4 repartition partitions, one series each
        run.wait_metric(f'eos_records_out_total{{job="{run.scenario.group}",topic="{run.scenario.output}"}}',
                        lambda v: v >= len(fed), what="records out to count the whole output")
        run.wait_metric(f'eos_state_keys{{job="{run.scenario.group}",operator="totals"}}', lambda v: v > 0,
                        what="the totals operator's state keys")
        assert run.worker.terminate() == 0, run.worker.log_tail()
        report = run.scenario.check(dict(fed))
        assert report.ok, report.summary()
    finally:
        run.close()


def _worker_with_checkpoints(bootstrap: str, tmp_path: Path) -> Monitored:
    """A worker that has completed at least two checkpoints and processed its input."""
    run = Monitored(bootstrap, tmp_path, records=1_000, throttle_ms=0, scraped=False)
    run.scenario.feed_all_now()
    run.start_worker()
    run.scenario.wait_complete(run.worker)
    wait_for(lambda: json.loads(_get(run.url("/status.json"))[1])["last_checkpoint_id"] >= 2, 60, 0.5,
             "two completed checkpoints")
    return run


def test_status_page_in_chromium_shows_completed_checkpoints(bootstrap, tmp_path):
    browser.chromium_binary()  # skips before anything starts when Chromium is missing
    run = _worker_with_checkpoints(bootstrap, tmp_path)
    try:
        shot = browser.screenshot(run.url("/"), tmp_path / "status-page.png")
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, OUTPUT_DIR / "status-page.png")
        dom = browser.dump_dom(run.url("/"))
        history = browser.table_rows(dom, "checkpoint-history")
        committed = [int(cells[0]) for cls, cells in history if "committed" in cls.split()]
        assert len(committed) >= 2, f"history table: {history}"
        assert committed == sorted(committed, reverse=True), "newest checkpoint first"
        tasks = browser.table_rows(dom, "tasks")
        assert len(tasks) == 8 and all(cells[5] == "0" for _, cells in tasks), tasks  # lag column
    finally:
        run.close()


def test_healthz_answers_200_while_running_and_unknown_paths_404(bootstrap, tmp_path):
    run = _worker_with_checkpoints(bootstrap, tmp_path)
    try:
        assert _get(run.url("/healthz")) == (200, "ok\n")
        status, body = _get(run.url("/no-such-page"))
        assert status == 404 and "/no-such-page" in body
        status, _ = _get(run.url("/healthz"), method="POST")
        assert status == 405
    finally:
        run.close()


def test_metrics_stay_right_across_sigkill_and_restart(bootstrap, tmp_path):
    run = Monitored(bootstrap, tmp_path, records=20_000, throttle_ms=2)
    try:
        first_half = {i: o for i, o in run.scenario.orders.items() if i < 1_000}
        run.scenario.feed_all_now(first_half)
        run.start_worker()
        run.scenario.wait_complete(run.worker, expected=set(first_half))
        run.wait_metric(f"eos_last_checkpoint_id{run.selector}", lambda v: v >= 2,
                        what="two checkpoints before the kill")
        run.worker.kill()
        checkpoint_before = run.prometheus.value(f"max_over_time(eos_last_checkpoint_id{run.selector}[10m])")

        run.start_worker()
        run.wait_metric(f"eos_restarts_total{run.selector}", lambda v: v == 1,
                        what="the restart after SIGKILL to be counted")
        run.scenario.chunk, run.scenario.chunk_pause_s = 200, 0.2  # 1,000 records/s for a job that takes 500
        stop = threading.Event()
        fed = run.scenario.start_feeding_until(stop, {i: o for i, o in run.scenario.orders.items() if i >= 1_000})
        # The killed worker's series went stale when its scrapes failed: lag seen now is
        # the restarted worker's, and the feeder outpaces it until Prometheus has seen it.
        run.wait_metric(f"sum(eos_consumer_lag{run.selector})", lambda v: v > 0,
                        what="the restarted worker's lag in Prometheus")
        run.wait_metric(f"eos_last_checkpoint_id{run.selector}", lambda v: v > checkpoint_before,
                        what="checkpoint ids to continue past the ones before the kill")
        stop.set()
        run.scenario.wait_fed()
        run.scenario.wait_complete(run.worker, expected=set(first_half) | set(fed))
        run.wait_metric(f"sum(eos_consumer_lag{run.selector})", lambda v: v == 0,
                        what="the lag to fall to 0 after the restart")
        assert run.prometheus.value(f"resets(eos_checkpoints_completed_total{run.selector}[10m])") >= 1
        assert run.worker.terminate() == 0, run.worker.log_tail()
        report = run.scenario.check({**first_half, **fed})
        assert report.ok, report.summary()
    finally:
        run.close()
