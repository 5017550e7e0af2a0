"""`eos run JOB.py ...`: run one worker of a job until stopped."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from pathlib import Path

import click

from service.cli.options import (
    CHECKPOINT_STORAGE_ENV,
    DURATION,
    KafkaSettings,
    control_token_options,
    kafka_options,
    option,
)
from service.cli.storage_options import s3_options
from service.job.loader import load_job
from service.runtime.config import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    FULL,
    INCREMENTAL,
    OFFSET_COMMIT_INTERVAL_S,
    WorkerConfig,
    default_transaction_timeout_s,
    default_worker_id,
    parse_key_values,
)
from service.runtime.allocator import limit_malloc_arenas
from service.runtime.restart import RestartStrategy, run_with_restarts
from service.runtime.worker import Worker
from statestore.storage import S3Settings


@click.command("run")
@click.argument("job_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@kafka_options()
@option("--job", "group", default=None, metavar="JOB", hidden_aliases=("--group",),
        help="The job id: its consumer group, and its identity in Kafka and checkpoint storage "
             "(default: the job's name).")
@click.option("--state-dir", type=click.Path(path_type=Path), required=True,
              help="Local directory for task state (RocksDB).")
@click.option("--checkpoint-storage", required=True, envvar=CHECKPOINT_STORAGE_ENV, show_envvar=True,
              help="file:///path or s3://bucket/prefix.")
@s3_options
@click.option("--checkpoint-interval", type=DURATION, default="1s", show_default=True,
              help="Time from the start of one checkpoint to the start of the next. 0 disables "
                   f"checkpoints (at-least-once only): offsets alone are committed every "
                   f"{OFFSET_COMMIT_INTERVAL_S:.0f}s and state is NOT recovered after a restart.")
@click.option("--checkpoint-timeout", type=DURATION, default="20s", show_default=True,
              help="A checkpoint whose snapshot is not durable by then fails: its transaction "
                   "aborts and the worker rewinds.")
@click.option("--min-pause", type=DURATION, default="0s", show_default=True,
              help="Minimum time from the end of one checkpoint to the start of the next.")
@click.option("--snapshot-interval", type=DURATION, default="0s", show_default=True,
              help="0: every checkpoint snapshots the state. Otherwise a checkpoint writes the state's "
                   "changes to the stage's changelog topic inside its transaction, and a task's state is "
                   "snapshotted at most this often: short checkpoint intervals (low latency) without a "
                   "snapshot each time. Exactly-once only.")
@click.option("--max-task-idle", type=DURATION, default="0s", show_default=True,
              help="How long a task reading several inputs (a join) waits for an input with nothing "
                   "buffered before it runs the other inputs' records; it always waits for records "
                   "already on the broker.")
@click.option("--tolerable-failures", default=3, show_default=True,
              help="Consecutive failed checkpoints tolerated; one more stops the worker (exit 4).")
@click.option("--checkpoints-retained", default=3, show_default=True,
              help="Completed checkpoints kept per task in storage.")
@click.option("--checkpoint-mode", type=click.Choice([INCREMENTAL, FULL]), default=INCREMENTAL,
              show_default=True, help="incremental: upload only SST files storage lacks; "
              "full: every checkpoint is a self-contained copy.")
@click.option("--storage-scrub-interval", type=DURATION, default="10s", show_default=True,
              help="Every interval one task's latest snapshot is checked against checkpoint storage (sizes, and "
                   "the content of some files in turn); a damaged file is written again from the intact local "
                   "copy. 0 turns the scrub off.")
@click.option("--fallback-to-older-checkpoint", is_flag=True,
              help="If the committed checkpoint's snapshot is missing or corrupt, restore the "
                   "newest intact older one and replay its input without emitting outputs.")
@click.option("--worker-id", default=default_worker_id, show_default="hostname",
              help="Stable worker slot: transactional id and static group membership.")
@click.option("-p", "--param", "params", multiple=True, help="Job parameter NAME=VALUE (repeatable).")
@click.option("--processing-guarantee", type=click.Choice([EXACTLY_ONCE, AT_LEAST_ONCE]),
              default=EXACTLY_ONCE, show_default=True)
@click.option("--session-timeout", type=DURATION, default="6s", show_default=True,
              help="A worker silent this long (dead, frozen, cut off) leaves the group and its "
              "partitions move to the others. Heartbeats run on their own thread.")
@click.option("--max-poll-interval", type=DURATION, default="300s", show_default=True,
              help="A worker whose loop stalls this long gives up its partitions (must exceed twice "
              "the checkpoint timeout).")
@click.option("--transaction-timeout", type=DURATION, default=None,
              show_default="max(30s, 1.5 x checkpoint timeout)",
              help="The coordinator aborts a transaction open this long, e.g. a crashed worker's.")
@click.option("--static-membership/--dynamic-membership", default=True, show_default=True,
              help="Static: the worker id is the group instance id, so a worker restarted after a crash gets "
              "its partitions back at once, without a rebalance (dynamic: only after its old membership "
              "expires, the session timeout plus a rebalance). Which process of a worker id is the newest "
              "is kept in the checkpoint storage, so a static member frozen past its session timeout stops "
              "when it wakes instead of taking its partitions back from its replacement.")
@click.option("--leave-group-on-stop/--stay-in-group-on-stop", default=True, show_default=True,
              help="On SIGTERM, leave the group so the partitions move at once. Stay: a static "
              "member keeps them for the session timeout (a quick restart resumes without a rebalance).")
@click.option("--fence-departed/--no-fence-departed", default=True, show_default=True,
              help="After a rebalance, abort the open transactions of workers that left the group "
              "(needs write access to their transactional ids).")
@click.option("--state-cache", default=128, show_default=True,
              help="Write-back cache budget in MiB, shared by the worker's stateful tasks; the rest of the "
                   "state stays in RocksDB.")
@click.option("--error-policy", type=click.Choice(["fail", "dead-letter", "skip-and-log"]), default="fail",
              show_default=True, help="What to do with a record that cannot be processed, for operators "
              "whose job code does not choose (dead-letter: to the topic {group}-dlq, exactly-once).")
@click.option("--on-missing-input", type=click.Choice(["fail", "skip-to-earliest"]), default="fail",
              show_default=True, help="Input records deleted from Kafka before the job processed them (retention "
              "ran out while it was down): stop naming the partition and how many are gone, or read on from the "
              "earliest offset left, logging the same. Either way they are counted in "
              "eos_input_records_missing_total.")
@click.option("--http-host", default="127.0.0.1", show_default=True,
              help="Address the status page, /metrics and /healthz listen on (0.0.0.0 in a container).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the status page, /metrics and /healthz; 0 picks a free port; "
                   "absent: no HTTP server and no client statistics.")
@control_token_options
@click.option("--control-allow", multiple=True, metavar="CIDR",
              help="Network remote control callers may come from (repeatable); needs --control-token. "
                   "Without both, control endpoints answer local callers only.")
@click.option("--savepoint-dir", default=None,
              help="Where `eos savepoint trigger|stop` writes savepoints unless given --target "
                   "(path or storage URL; default: {checkpoint-storage}/{group}/savepoints).")
@click.option("--http-advertised-url", "http_advertised_urls", multiple=True, metavar="URL",
              help="Address other workers and `eos job|savepoint|state` reach this worker's HTTP port at, "
                   "tried in order (repeatable, e.g. one for the containers' network and one for the host); "
                   "default: http://HOST:PORT of --http-host, or of this machine's name when bound to all "
                   "interfaces. Advertised in the worker's consumer client id.")
@click.option("-s", "--from-savepoint", default=None, metavar="PATH",
              help="Resume from this savepoint (path or storage URL) once; later restarts of this "
                   "worker continue from its checkpoints.")
@click.option("-n", "--allow-non-restored-state", is_flag=True,
              help="Resume from a savepoint even if it holds state of operators the job no longer has.")
@click.option("--restart-strategy", default="none", show_default=True,
              help="Restart in-process after a failure inside the worker: none, "
                   "fixed-delay:ATTEMPTS:DELAY or exponential-backoff:MAX.")
def run(job_file: Path, kafka: KafkaSettings, group: str | None, state_dir: Path,
        checkpoint_storage: str, checkpoint_interval: float, checkpoint_timeout: float, min_pause: float,
        snapshot_interval: float, max_task_idle: float, tolerable_failures: int, checkpoints_retained: int, checkpoint_mode: str,
        storage_scrub_interval: float, fallback_to_older_checkpoint: bool, s3: S3Settings, worker_id: str,
        params: tuple[str, ...], processing_guarantee: str, session_timeout: float, max_poll_interval: float,
        transaction_timeout: float | None, static_membership: bool, leave_group_on_stop: bool, fence_departed: bool,
        state_cache: int, error_policy: str, on_missing_input: str, http_host: str, http_port: int | None,
        control_token: str | None, control_allow: tuple[str, ...], http_advertised_urls: tuple[str, ...],
        savepoint_dir: str | None, from_savepoint: str | None, allow_non_restored_state: bool,
        restart_strategy: str) -> None:
    """Run one worker of JOB_FILE (a module with build(params) -> Job)."""
    parsed_params = parse_key_values(params, "-p")
    timeout_s, interval_s = checkpoint_timeout, checkpoint_interval
    transaction_s = transaction_timeout if transaction_timeout is not None \
        else default_transaction_timeout_s(timeout_s, interval_s)
    config = WorkerConfig(
        job_file=job_file, bootstrap_servers=kafka.bootstrap_servers, state_dir=state_dir,
        checkpoint_storage=checkpoint_storage, group=group, worker_id=worker_id,
        params=parsed_params, processing_guarantee=processing_guarantee,
        checkpoint_interval_s=interval_s,
        checkpoint_timeout_s=timeout_s, min_pause_s=min_pause, snapshot_interval_s=snapshot_interval,
        max_task_idle_s=max_task_idle,
        tolerable_failures=tolerable_failures, checkpoints_retained=checkpoints_retained,
        checkpoint_mode=checkpoint_mode, fallback_to_older_checkpoint=fallback_to_older_checkpoint,
        storage_scrub_interval_s=storage_scrub_interval,
        s3=s3,
        transaction_timeout_s=transaction_s,
        session_timeout_ms=int(session_timeout * 1000), max_poll_interval_ms=int(max_poll_interval * 1000),
        static_membership=static_membership, leave_group_on_stop=leave_group_on_stop,
        fence_departed_workers=fence_departed,
        state_cache_bytes=state_cache << 20, error_policy=error_policy, on_missing_input=on_missing_input,
        kafka_config=kafka.config, http_host=http_host, http_port=http_port,
        http_advertised_urls=tuple(http_advertised_urls), control_token=control_token or None,
        control_allow=tuple(control_allow), savepoint_dir=savepoint_dir, from_savepoint=from_savepoint,
        allow_non_restored_state=allow_non_restored_state)
    strategy = RestartStrategy.parse(restart_strategy)
    enable_stack_dumps()
    limit_malloc_arenas()

    abandoned = False

    def attempt() -> tuple[int, BaseException | None]:
        nonlocal abandoned
        worker = Worker(config, load_job(job_file, parsed_params))
        code = worker.run()
        abandoned = abandoned or worker.abandoned_clients
        return code, worker.failure

    code = run_with_restarts(attempt, strategy)
    if abandoned:
        # A consumer stuck closing would block the interpreter's exit in its destructor.
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def enable_stack_dumps() -> None:
    """A worker that hangs or dies inside a native client must say where.

    A fatal signal (SIGSEGV, SIGABRT from a client library's assertion) prints every
    thread's Python stack before the process dies, and `kill -USR1 PID` prints them from
    a live worker without stopping it, as `jstack` does for a JVM.
    """
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
