"""A real Prometheus server (Debian's `prometheus` package) scraping test workers.

Started as a subprocess on a free port with a generated configuration, a private
storage directory and a short scrape interval; queried through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.harness.ports import free_port

INSTALL_HINT = "apt-get install prometheus (Debian); .ci/run installs it"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.skip(f"no prometheus on PATH: {INSTALL_HINT}")
    return found


def promtool_binary() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.skip(f"no promtool on PATH: {INSTALL_HINT}")
    return found


def scrape_config(targets: list[str], interval: str = "1s") -> str:
    """The same shape as deploy/prometheus/prometheus.yml, pointed at local workers."""
    quoted = ", ".join(f'"{t}"' for t in targets)
    return (f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"scrape_configs:\n  - job_name: eos-workers\n    honor_labels: true\n"
            f"    metrics_path: /metrics\n    scrape_interval: {interval}\n"
            f"    static_configs:\n      - targets: [{quoted}]\n")


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[str], interval: str = "1s") -> None:
        binary = prometheus_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(scrape_config(targets, interval))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(60)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout:.0f}s: {self.log_tail()}")

    def query(self, promql: str) -> list[dict]:
        """The instant vector for `promql` now: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of a query that yields one series (or None: no series yet)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql!r} gave {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def targets_up(self) -> bool:
        return all(float(r["value"][1]) == 1.0 for r in self.query('up{job="eos-workers"}')) and bool(
            self.query('up{job="eos-workers"}'))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
