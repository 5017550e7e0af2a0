"""Runs one combined broker+controller Apache Kafka JVM in KRaft mode on this machine.

The broker is real (the same jars as any Kafka 4 distribution), so its transaction
coordinator, group coordinator and fencing are the ones production relies on. Settings
are single-node ones: replication factor 1 for the internal topics, few internal
partitions for fast start, and a low minimum session timeout so rebalance tests do not
wait out production-sized timeouts.
"""

from __future__ import annotations

import base64
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from eos.errors import LocalKafkaError
from service.local_kafka.distribution import (
    KafkaDistribution,
    cache_root,
    ensure_distribution,
    require_java,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


@dataclass
class BrokerSettings:
    """Where and how the local broker runs. `sasl_port` adds a SASL_PLAINTEXT listener
    (SCRAM-SHA-256) whose users, `scram_users` (name -> password), are created when the
    storage is formatted. `extra` overrides or adds server properties."""

    port: int = 9092
    data_dir: Path | None = None
    controller_port: int | None = None
    heap: str = "1g"
    sasl_port: int | None = None
    scram_users: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    # The broker is killed when the process that started it ends, however it ends (a
    # test run stopped by a signal never reaches its clean-up). `eos kafka start` leaves
    # it off: that broker outlives the command by design.
    dies_with_owner: bool = False

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else cache_root() / "kafka-data" / str(self.port)

    def resolved_controller_port(self) -> int:
        return self.controller_port or self.port + 1


PR_SET_PDEATHSIG = 1


def _killed_with_parent() -> None:
    """Runs in the broker's process before the JVM starts: the kernel sends it SIGKILL
    when the thread that started it exits (PR_SET_PDEATHSIG)."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _server_properties(settings: BrokerSettings, log_dir: Path) -> dict[str, str]:
    port, cport = settings.port, settings.resolved_controller_port()
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@localhost:{cport}",
        "listeners": f"PLAINTEXT://localhost:{port},CONTROLLER://localhost:{cport}",
        "advertised.listeners": f"PLAINTEXT://localhost:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "4",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "500",
        "transaction.max.timeout.ms": "900000",
        # Let a crashed producer's dangling transaction be aborted soon after its timeout.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
        "log.retention.check.interval.ms": "60000",
    }
    if settings.sasl_port:
        sasl = f"SASL_PLAINTEXT://localhost:{settings.sasl_port}"
        props["listeners"] += f",{sasl}"
        props["advertised.listeners"] += f",{sasl}"
        props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256"
        props["listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;")
    props.update(settings.extra)
    return props


def _port_open(port: int, host: str = "localhost") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return bool(metadata.brokers)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


class LocalBroker:
    """Start, stop and inspect one local broker. Idempotent: a broker already running
    from the same data directory is reused, not restarted."""

    def __init__(self, settings: BrokerSettings | None = None) -> None:
        self.settings = settings or BrokerSettings()
        self.data_dir = self.settings.resolved_data_dir()
        self.pid_file = self.data_dir / "broker.pid"
        self.log_file = self.data_dir / "server.log"
        self.stdout_file = self.data_dir / "broker.out"

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.settings.port}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None and _broker_answers(self.bootstrap, timeout=3.0)

    def start(self, distribution: KafkaDistribution | None = None) -> str:
        """Starts the broker (or reuses the running one) and returns its bootstrap address."""
        if self.pid() is not None:
            if self._wait_ready(self.pid(), timeout=READY_TIMEOUT_S):
                log.info("reusing local Kafka broker at %s (pid %s)", self.bootstrap, self.pid())
                return self.bootstrap
        for port in (self.settings.port, self.settings.resolved_controller_port(), self.settings.sasl_port):
            if not port:
                continue
            if _port_open(port):
                raise LocalKafkaError(
                    f"port {port} is already taken by another process; choose another with "
                    f"--port, or stop what listens there (e.g. `ss -ltnp 'sport = :{port}'`)"
                )
        java = require_java()
        dist = distribution or ensure_distribution()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format_storage(java, dist, config)
        cmd = [
            java,
            "-Xms256m", f"-Xmx{self.settings.heap}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]
        cmd += ["-cp", dist.classpath, "kafka.Kafka", str(config)]
        with open(self.stdout_file, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.data_dir,
                preexec_fn=_killed_with_parent if self.settings.dies_with_owner else None,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        if not self._wait_ready(proc.pid, timeout=READY_TIMEOUT_S):
            self._kill(proc.pid)
            raise LocalKafkaError(
                f"the Kafka broker did not come up on {self.bootstrap} within "
                f"{READY_TIMEOUT_S:.0f}s. Last lines of {self.log_file}:\n{_tail(self.log_file)}\n"
                f"Last lines of {self.stdout_file}:\n{_tail(self.stdout_file)}"
            )
        log.info("local Kafka %s broker running at %s (pid %s)", dist.version, self.bootstrap, proc.pid)
        return self.bootstrap

    def stop(self) -> bool:
        """Stops the broker cleanly (SIGTERM, then SIGKILL after a grace period).
        Returns whether a broker was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._kill(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def freeze(self) -> None:
        """Stops the broker process abruptly (SIGKILL): for outage tests."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._reap(pid, 10)

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "running": pid is not None and _broker_answers(self.bootstrap, timeout=3.0),
            "pid": pid,
            "bootstrap": self.bootstrap,
            "data_dir": str(self.data_dir),
            "log": str(self.log_file),
        }

    def _write_config(self) -> Path:
        log_dir = self.data_dir / "kraft-logs"
        props = _server_properties(self.settings, log_dir)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log_file=self.log_file))
        return config

    def _format_storage(self, java: str, dist: KafkaDistribution, config: Path) -> None:
        log_dir = self.data_dir / "kraft-logs"
        if (log_dir / "meta.properties").exists():
            return
        cid = _cluster_id()
        cmd = [java, "-cp", dist.classpath,
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(config)]
        for user, password in self.settings.scram_users.items():
            cmd += ["--add-scram", f"SCRAM-SHA-256=[name={user},password={password}]"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalKafkaError(
                f"formatting KRaft storage in {log_dir} failed:\n{(result.stdout + result.stderr)[-3000:]}"
            )

    def _wait_ready(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return False
            if _port_open(self.settings.port) and _broker_answers(self.bootstrap, timeout=2.0):
                return True
            time.sleep(0.3)
        return False

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not self._reap(pid, STOP_TIMEOUT_S):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self._reap(pid, 10)

    @staticmethod
    def _reap(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    return True
            except ChildProcessError:
                pass
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return False


def _cluster_id() -> str:
    """A random KRaft cluster id (a URL-safe base64 UUID). One starting with '-' would be
    read by kafka-storage as an option ("--cluster-id: expected one argument"), so such
    ids are drawn again, as Kafka's own Uuid.randomUuid() does."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
