"""Everything a worker is told from outside, checked once at start."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from eos import secrets
from eos.errors import ConfigurationError
from statestore.storage import S3Settings

EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
INCREMENTAL = "incremental"
FULL = "full"
# With checkpoints disabled (at-least-once only), offsets alone are committed this often:
# Kafka's own auto-commit default.
OFFSET_COMMIT_INTERVAL_S = 5.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, what: str) -> float:
    """'500ms', '1s', '2m', '1.5' (seconds) -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigurationError(f"{what}: {text!r} is not a duration like 500ms, 1s or 2m")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_key_values(pairs: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"{what}: {pair!r} is not NAME=VALUE")
        result[name.strip()] = value
    return result


def resolve_value(name: str, value: str) -> str:
    """`@env:VAR` and `@file:PATH` keep secrets (SASL passwords, TLS key passwords) off
    the command line, where `ps` shows them to every user of the machine."""
    return secrets.resolve(value, f"--kafka-config {name}")


def load_kafka_config(pairs: tuple[str, ...] | list[str], files: tuple[Path, ...] | list[Path] = ()) -> dict[str, str]:
    """librdkafka settings from `KEY=VALUE` files (lines; '#' comments) and flags; flags
    win. Values may be `@env:VAR` or `@file:PATH`."""
    lines: list[str] = []
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(f"--kafka-config-file {path}: {exc.strerror}") from None
        lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    merged = parse_key_values(lines, "--kafka-config-file") | parse_key_values(pairs, "--kafka-config")
    return {name: resolve_value(name, value) for name, value in merged.items()}


def redacted(config: dict[str, object]) -> dict[str, object]:
    """A copy safe to log: anything that looks like a secret is masked."""
    return {k: ("*****" if any(w in k for w in ("password", "secret", "token", "key")) else v)
            for k, v in config.items()}
# Liveness defaults (see docs/scale-out.md). A dead worker's partitions move after the
# session timeout; 6 s is the smallest value a broker accepts by default
# (group.min.session.timeout.ms). Heartbeats come from the client's own thread, so a long
# checkpoint never delays them; only a frozen or dead process misses its session.
DEFAULT_SESSION_TIMEOUT_MS = 6_000
# The loop stalls while a checkpoint runs (bounded by the checkpoint timeout) and while a
# rewind restores state; the poll interval must cover both with room to spare.
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000
DEFAULT_CHECKPOINT_TIMEOUT_S = 20.0
# A transaction stays open from the first output after a commit until the next commit:
# one checkpoint interval plus one checkpoint. Short, because a crashed worker's open
# transaction holds back every read_committed reader of the partitions it wrote to
# until it is aborted (by the worker's restart, by a group member fencing it, or by the
# coordinator after this timeout).
MIN_TRANSACTION_TIMEOUT_S = 30.0
TRANSACTION_MARGIN_S = 5.0


def default_transaction_timeout_s(checkpoint_timeout_s: float, checkpoint_interval_s: float) -> float:
    return max(MIN_TRANSACTION_TIMEOUT_S, 1.5 * checkpoint_timeout_s,
               checkpoint_timeout_s + checkpoint_interval_s + TRANSACTION_MARGIN_S)


def default_worker_id() -> str:
    return socket.gethostname().split(".")[0] or "worker"


@dataclass(frozen=True)
class WorkerConfig:
    job_file: Path
    bootstrap_servers: str
    state_dir: Path
    checkpoint_storage: str
    group: str | None = None
    worker_id: str = field(default_factory=default_worker_id)
    params: dict[str, str] = field(default_factory=dict)
    processing_guarantee: str = EXACTLY_ONCE
    checkpoint_interval_s: float = 1.0
    checkpoint_timeout_s: float = DEFAULT_CHECKPOINT_TIMEOUT_S
    min_pause_s: float = 0.0
    # 0: every checkpoint snapshots the state. Otherwise checkpoints log state changes to
    # a changelog topic inside their transactions and snapshot at most this often.
    snapshot_interval_s: float = 0.0
    tolerable_failures: int = 3
    checkpoints_retained: int = 3
    checkpoint_mode: str = INCREMENTAL
    fallback_to_older_checkpoint: bool = False
    s3: S3Settings = field(default_factory=S3Settings)
    transaction_timeout_s: float = MIN_TRANSACTION_TIMEOUT_S
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    max_poll_interval_ms: int = DEFAULT_MAX_POLL_INTERVAL_MS
    auto_offset_reset: str = "earliest"
    # Static by default: a worker restarted after a crash gets its partitions back at
    # once instead of after the session timeout and a rebalance (docs/architecture.md,
    # "Membership"; the slot's register keeps a woken static member from taking them back).
    static_membership: bool = True
    # A graceful stop leaves the consumer group, so the worker's partitions move at once
    # instead of after the session timeout (a static member otherwise stays registered).
    leave_group_on_stop: bool = True
    # After each rebalance, abort the open transactions of workers that left the group,
    # so their unfinished output stops holding back read_committed readers.
    fence_departed_workers: bool = True
    state_cache_bytes: int = 128 << 20
    consume_batch: int = 5000
    # A task of several inputs waits this long for an input with nothing buffered before
    # it runs the others' records (Kafka Streams' max.task.idle.ms): only records not yet
    # produced can then reorder it. It always waits for records already on the broker.
    max_task_idle_s: float = 0.0
    error_policy: str = "fail"
    # Seconds between storage scrub rounds (one task's latest snapshot each); 0: none.
    storage_scrub_interval_s: float = 10.0
    # Input records deleted before they were processed: stop (fail) or skip-to-earliest.
    on_missing_input: str = "fail"
    kafka_config: dict[str, str] = field(default_factory=dict)
    # Monitoring: no port, no HTTP server and no client statistics; 0 picks a free port.
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    # Where others reach the HTTP port, tried in order (advertised in the consumer's client id).
    http_advertised_urls: tuple[str, ...] = ()
    control_token: str | None = None
    control_allow: tuple[str, ...] = ()
    stats_interval_ms: int = 1000
    # Savepoints: where `eos savepoint` writes them unless told otherwise (default
    # {checkpoint_storage}/{group}/savepoints), and the one to resume from.
    savepoint_dir: str | None = None
    from_savepoint: str | None = None
    allow_non_restored_state: bool = False

    @property
    def monitoring(self) -> bool:
        return self.http_port is not None

    @property
    def checkpoints_enabled(self) -> bool:
        return self.checkpoint_interval_s > 0

    @property
    def incremental_checkpoints(self) -> bool:
        return self.checkpoint_mode == INCREMENTAL

    def validate(self) -> None:
        if self.processing_guarantee not in (EXACTLY_ONCE, AT_LEAST_ONCE):
            raise ConfigurationError(
                f"--processing-guarantee must be {EXACTLY_ONCE} or {AT_LEAST_ONCE}, "
                f"not {self.processing_guarantee!r}")
        if self.checkpoint_interval_s <= 0 and self.processing_guarantee == EXACTLY_ONCE:
            raise ConfigurationError(
                "--checkpoint-interval 0 disables checkpoints, which exactly-once needs; "
                "use --processing-guarantee at-least-once to run without them")
        if self.checkpoint_timeout_s + self.checkpoint_interval_s + TRANSACTION_MARGIN_S > self.transaction_timeout_s:
            raise ConfigurationError(
                f"the transaction timeout ({self.transaction_timeout_s:g}s) must exceed the checkpoint "
                f"interval plus the checkpoint timeout ({self.checkpoint_interval_s:g}s + "
                f"{self.checkpoint_timeout_s:g}s) by at least {TRANSACTION_MARGIN_S:g}s, or the transaction "
                "coordinator aborts transactions that were about to commit")
        if self.max_poll_interval_ms < 2000 * self.checkpoint_timeout_s + 10_000:
            raise ConfigurationError(
                f"--max-poll-interval ({self.max_poll_interval_ms / 1000:g}s) must exceed twice the checkpoint "
                f"timeout ({self.checkpoint_timeout_s:g}s) plus 10s: a checkpoint and the rewind after a failed "
                "one both hold up polling, and a worker that polls too late is removed from the group")
        if self.session_timeout_ms < 1000:
            raise ConfigurationError(
                f"--session-timeout ({self.session_timeout_ms}ms) must be at least 1s")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.worker_id):
            raise ConfigurationError(f"--worker-id {self.worker_id!r} may hold only letters, digits, '.', '_', '-'")
        if self.checkpoint_mode not in (INCREMENTAL, FULL):
            raise ConfigurationError(
                f"--checkpoint-mode must be {INCREMENTAL} or {FULL}, not {self.checkpoint_mode!r}")
        if self.snapshot_interval_s < 0:
            raise ConfigurationError("--snapshot-interval must be 0 (a snapshot with every checkpoint) or positive")
        if self.snapshot_interval_s > 0 and self.processing_guarantee != EXACTLY_ONCE:
            raise ConfigurationError(
                "--snapshot-interval logs state changes inside each checkpoint's transaction, which only "
                f"{EXACTLY_ONCE} has; with {self.processing_guarantee} every checkpoint snapshots the state")
        if self.checkpoint_timeout_s <= 0:
            raise ConfigurationError("--checkpoint-timeout must be positive")
        if self.tolerable_failures < 0:
            raise ConfigurationError("--tolerable-failures must be 0 or more")
        if self.checkpoints_retained < 1:
            raise ConfigurationError("--checkpoints-retained must be at least 1")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigurationError(f"--http-port {self.http_port} is not a TCP port (0-65535; 0 picks a free one)")
        if bool(self.control_token) != bool(self.control_allow):
            raise ConfigurationError("remote control needs both --control-allow (the callers' networks) "
                                     "and --control-token; give both or neither")
