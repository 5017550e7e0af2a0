"""A real schema registry for tests: Apicurio Registry, a JVM from Maven Central.

There is no Docker engine here, and Confluent's own registry is not on Maven Central,
but Apicurio Registry is, as one runnable jar, and it serves Confluent's REST API at
`/apis/ccompat/v7`: confluent-kafka's `SchemaRegistryClient` and serializers talk to it
as they would to Confluent's. The application is fetched once with Maven (the `all`
zip of `io.apicurio:apicurio-registry-app`) and unpacked under eos's cache directory,
so later runs start it without touching the network. It keeps its schemas in an
in-memory H2 database: a stopped registry forgets everything.

Confluent's registry checks new schemas for BACKWARD compatibility unless told
otherwise; Apicurio checks nothing by default, so the server is given that global rule
at start, as a Confluent registry would have it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from service.local_kafka.distribution import cache_root, require_java
from tests.harness.ports import free_port
from tests.harness.server_process import start_server, stop_server

log = logging.getLogger(__name__)

APICURIO_VERSION = os.environ.get("EOS_TEST_APICURIO_VERSION", "3.0.9")
CCOMPAT_PATH = "/apis/ccompat/v7"


def ensure_registry_app(version: str = APICURIO_VERSION, cache: Path | None = None) -> Path:
    """The runner jar of Apicurio Registry `version`, fetched and unpacked on first use."""
    target = (cache or cache_root()) / "apicurio-registry" / version
    runner = target / f"apicurio-registry-app-{version}-runner.jar"
    marker = target / "complete"
    if marker.exists() and runner.exists():
        return runner
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError(f"Maven (`mvn`) is needed once to fetch Apicurio Registry {version} into {target}")
    with tempfile.TemporaryDirectory(prefix="eos-apicurio-") as work:
        artifact = f"io.apicurio:apicurio-registry-app:{version}:zip:all"
        log.info("fetching %s from Maven Central into %s", artifact, target)
        done = subprocess.run([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={artifact}",
                               f"-DoutputDirectory={work}"], capture_output=True, text=True, cwd=work)
        archive = Path(work) / f"apicurio-registry-app-{version}-all.zip"
        if done.returncode != 0 or not archive.exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"Maven could not fetch {artifact}:\n{tail}")
        staging = Path(work) / "app"
        with zipfile.ZipFile(archive) as unpacked:
            unpacked.extractall(staging)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    marker.write_text(version + "\n")
    return runner


class RegistryServer:
    """One Apicurio Registry process, in memory, on a free port of this test process."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.base = f"http://{host}:{self.port}"
        # What clients are given: Confluent's API, as confluent-kafka expects it.
        self.url = self.base + CCOMPAT_PATH
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"eos-apicurio-{self.port}-{os.getpid()}.log"

    def start(self, timeout: float = 120.0) -> None:
        runner = ensure_registry_app()
        self._proc = start_server(
            [require_java(), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dquarkus.http.port={self.port}", f"-Dquarkus.http.host={self.host}",
             "-Dapicurio.storage.kind=sql", "-Dapicurio.storage.sql.kind=h2",
             "-Dquarkus.log.category.\"io.quarkus.http.access-log\".level=WARN",
             "-jar", str(runner)],
            self.log_path, self._answers, f"Apicurio Registry on {self.base}", timeout, cwd=runner.parent,
            poll_s=0.25)
        self.set_compatibility("BACKWARD")
        log.info("Apicurio Registry up at %s (pid %d)", self.url, self._proc.pid)

    def stop(self, grace: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_server(proc, grace)

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Confluent's `PUT /config[/subject]`: the compatibility new schemas must keep."""
        path = f"/config/{subject}" if subject else "/config"
        self._call("PUT", path, {"compatibility": level})

    def _call(self, method: str, path: str, body: dict | None = None) -> object:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")

    def _answers(self) -> bool:
        try:
            self._call("GET", "/subjects")
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False


@contextlib.contextmanager
def running_registry() -> Iterator[RegistryServer]:
    server = RegistryServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
