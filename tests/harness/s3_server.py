"""A real S3-compatible server for tests: moto's server mode in its own process.

boto3 talks HTTP to it exactly as it would to AWS or MinIO, so tests exercise the
network path (connection refused, timeouts, retries) and not a patched client. The
server can be stopped and started again on the same port to simulate a storage outage.

moto keeps every bucket and object in memory: a stop/start (or `restart()`) loses all of
them. `start()` re-creates the default bucket, nothing else survives.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3

from tests.harness.ports import free_port
from tests.harness.server_process import start_server, stop_server

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "eos-test"
REGION = "us-east-1"
DUMMY_KEY = "testing"


class S3Server:
    """One moto server process on a fixed host and port (chosen free at construction)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 bucket: str = DEFAULT_BUCKET) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.bucket = bucket
        self.endpoint = f"http://{host}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = Path(tempfile.gettempdir()) / f"eos-moto-{self.port}-{os.getpid()}.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Starts the process, waits until it answers HTTP, creates the default bucket."""
        if self.is_running():
            return
        self._proc = start_server(
            [sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", self.host], self._log_path,
            self._answers, f"moto server on {self.endpoint}", timeout)
        self.create_bucket(self.bucket)
        log.info("moto S3 server up at %s (pid %d)", self.endpoint, self._proc.pid)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
        proc, self._proc = self._proc, None
        stop_server(proc, grace)
        log.info("moto S3 server at %s stopped", self.endpoint)

    def restart(self) -> None:
        """Stops and starts on the same port. All objects and extra buckets are lost."""
        self.stop()
        self.start()

    def env(self) -> dict[str, str]:
        """AWS_* variables that point an S3 client (ours or the CLI's) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
        }

    def client(self):  # noqa: ANN201 - boto3 client types are generated, not importable
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()


@contextlib.contextmanager
def running_s3_server(port: int | None = None, bucket: str = DEFAULT_BUCKET) -> Iterator[S3Server]:
    """A started server, stopped (and its log removed) on exit."""
    server = S3Server(port=port, bucket=bucket)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server._log_path.unlink(missing_ok=True)
