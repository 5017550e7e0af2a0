"""The state directory's disk fills up under the worker: a clear error, nothing committed
past the last good checkpoint, and a restart once space is freed continues exactly-once."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.harness.scenario import RunningSum

pytestmark = pytest.mark.kafka


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(mount_point) -> object:
    """Takes every free byte of the disk."""
    filler = mount_point / "filler"
    with open(filler, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass
    return filler


def test_full_state_disk_stops_the_worker_clearly(bootstrap, tmp_path, small_disk):
    scenario = RunningSum(bootstrap, tmp_path, records=6_000, chunk=500, chunk_pause_s=0.3)
    scenario.start_feeding()
    worker = scenario.start_worker(state_dir=small_disk)
    time.sleep(3)
    filler = _fill(small_disk)
    try:
        code = worker.wait(120)
    finally:
        filler.unlink()
    log = worker.log_tail(5)
    assert code == 1, log
    assert "No space left on device" in log and str(small_disk) in log, log
    assert scenario.check().duplicates == 0

    scenario.wait_fed()
    survivor = scenario.start_worker(state_dir=small_disk)
    scenario.wait_complete(survivor)
    assert survivor.terminate() == 0, survivor.log_tail()
    report = scenario.check()
    assert report.ok, report.summary()
