"""`make run`'s demo, started as the README starts it (the installed `eos demo`, from
another working directory), against the run's broker: it must create its topics, run
the job to the end and print the totals."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.harness.worker_process import EOS

pytestmark = pytest.mark.kafka


def test_the_demo_runs_to_the_end_and_prints_the_totals(bootstrap, tmp_path):
    done = subprocess.run(
        [*EOS, "--log-level", "WARNING", "demo", "--bootstrap-servers", bootstrap, "--records", "3000",
         "--rate", "3000", "--users", "50", "--workdir", str(tmp_path / "demo"), "--http-port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "latest running totals" in done.stdout
    assert "worker stopped with a final checkpoint (exit 0)" in done.stdout
