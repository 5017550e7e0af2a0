"""`eos savepoint trigger|stop|list|show|dispose`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click
import orjson

from service.cli.options import (
    DURATION,
    KafkaSettings,
    control_token_options,
    job_argument,
    kafka_options,
    worker_urls_option,
)
from service.cli.storage_options import s3_options
from service.monitoring.job_status import JobView, resolve
from service.savepoints.catalog import INCOMPLETE, USABLE, dispose, list_savepoints
from service.savepoints.client import take_savepoint
from service.savepoints.resume import open_savepoint
from statestore.savepoint_manifest import SavepointManifest
from statestore.storage import S3Settings

_target = click.option("--target", default=None, metavar="DIR",
                       help="Directory (path or storage URL) to write the savepoint under; default: the "
                            "workers' --savepoint-dir.")
_timeout = click.option("--timeout", type=DURATION, default="5m", show_default=True,
                        help="How long the workers may take to drain and write.")
_legacy_job = click.option("--job", "legacy_jobs", multiple=True, hidden=True,
                           help="Earlier spelling: a worker URL (like --worker), or the job id.")


def _take_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for decorate in reversed((job_argument(required=False), kafka_options(required=False, help_suffix=(
            " Finds the job's workers through its consumer group; not needed with --worker.")),
            worker_urls_option, _legacy_job, _target, control_token_options, _timeout, s3_options)):
        command = decorate(command)
    return command


@click.group()
def savepoint() -> None:
    """Savepoints: take one (trigger, stop), list, show and dispose of them."""


def _take(mode: str, job: str | None, kafka: KafkaSettings, workers: tuple[str, ...], legacy_jobs: tuple[str, ...],
          target: str | None, control_token: str | None, timeout: float, s3: S3Settings) -> None:
    urls = list(workers) + [j for j in legacy_jobs if "://" in j]
    named = [j for j in legacy_jobs if "://" not in j]
    if named and job is not None and named != [job]:
        raise click.UsageError(f"the job is named twice: {job!r} and --job {', '.join(named)}")
    job = job or (named[0] if named else None)
    if not urls:
        if job is None:
            raise click.UsageError("name the JOB (its workers are found through its consumer group), "
                                   "or its workers with --worker URL")
        urls = discover_control_urls(job, kafka, control_token)
    result = take_savepoint(urls, mode=mode, target=target, token=control_token, timeout_s=timeout, s3=s3, job=job,
                            say=lambda text: click.echo(text, err=True))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    manifest = result.manifest
    click.echo(f"savepoint {manifest.id} of job {manifest.job} (group {manifest.group}): "
               f"{manifest.total_keys} keys, {len(manifest.positions)} partitions, "
               f"{len(manifest.workers)} worker(s), {result.seconds:.1f}s"
               + ("; the job stopped" if mode == "stop" else ""), err=True)
    click.echo(result.location)


def discover_control_urls(job: str, kafka: KafkaSettings, token: str | None) -> list[str]:
    """Each worker of the job's group at the first advertised address where it answers
    its control API as itself."""
    members = JobView(job, kafka.client_config()).members()
    if not members:
        raise click.ClickException(f"job {job!r} has no workers in its consumer group (is it running? "
                                   "`eos job list` shows the jobs)")
    peers = [resolve(m, job, path="/savepoints", token=token) for m in members]
    lost = [p for p in peers if p.url is None]
    if lost:
        raise click.ClickException("cannot reach every worker of job " + repr(job) + ": " + "; ".join(
            f"{p.worker}: {p.error}" for p in lost) + " (name the workers with --worker URL, or give them "
            "--http-advertised-url addresses this machine reaches)")
    return [p.url for p in peers if p.url]


@savepoint.command()
@_take_options
def trigger(**options: Any) -> None:
    """Take a savepoint of JOB; the job keeps running. Prints the savepoint's location."""
    _take("trigger", **options)


@savepoint.command()
@_take_options
def stop(**options: Any) -> None:
    """Stop JOB with a savepoint: sources stop, everything in flight drains, a final
    checkpoint commits, the savepoint is written and the workers exit 0. Prints its location."""
    _take("stop", **options)


@savepoint.command("list")
@click.argument("directory")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per savepoint.")
@s3_options
def list_cmd(directory: str, as_json: bool, s3: S3Settings) -> None:
    """List the savepoints in DIRECTORY; incomplete ones are marked not usable."""
    entries = list_savepoints(directory, s3)
    if as_json:
        for e in entries:
            click.echo(orjson.dumps({"name": e.name, "location": e.location, "status": e.status,
                                     "problem": e.problem, "size": e.size,
                                     "job": e.manifest.job if e.manifest else None,
                                     "group": e.manifest.group if e.manifest else None,
                                     "keys": e.manifest.total_keys if e.manifest else None}).decode())
        return
    if not entries:
        click.echo(f"no savepoints in {directory}")
        return
    for e in entries:
        if e.manifest is not None:
            m = e.manifest
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at))
            click.echo(f"{e.name}  {USABLE}  job {m.job}  group {m.group}  {m.kind}  {created}  "
                       f"{m.total_keys} keys  {e.size} bytes")
        else:
            label = "incomplete (not usable)" if e.status == INCOMPLETE else f"{e.status} (not usable)"
            click.echo(f"{e.name}  {label}: {e.problem}")


@savepoint.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@s3_options
def show(path: str, as_json: bool, s3: S3Settings) -> None:
    """Operators with key counts, partition offsets and parameters of the savepoint at PATH."""
    manifest, _ = open_savepoint(path, s3)
    if as_json:
        click.echo(orjson.dumps(asdict(manifest), option=orjson.OPT_INDENT_2).decode())
        return
    _print(manifest)


def _print(m: SavepointManifest) -> None:
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at))
    click.echo(f"savepoint {m.id}  (format {m.format} v{m.version}, {m.kind}, {created})")
    click.echo(f"job {m.job}  group {m.group}  workers {', '.join(m.workers)}  drained {'yes' if m.drained else 'no'}")
    click.echo("parameters: " + (", ".join(f"{k}={v}" for k, v in sorted(m.params.items())) or "none"))
    click.echo("stages:")
    for s in m.stages:
        click.echo(f"  {s.id:<20} topic {s.topic}  {s.partitions} partitions  key serde {s.key_serde}"
                   f"{'  (repartition)' if s.repartition else ''}")
    click.echo("operators:")
    if not m.states:
        click.echo("  (no keyed state)")
    for st in m.states:
        click.echo(f"  {st.uid:<20} state {st.name:<12} {st.kind:<5} {st.codec:<6} {st.keys:>10} keys "
                   f"in {len(st.files)} files ({sum(f.size for f in st.files)} bytes)")
    click.echo("offsets:")
    for p in m.positions:
        offset = "beginning" if p.offset is None else str(p.offset)
        click.echo(f"  {p.topic}[{p.partition}]  {offset}  (checkpoint {p.checkpoint_id}, worker {p.worker})")


@savepoint.command("dispose")
@click.argument("path")
@s3_options
def dispose_cmd(path: str, s3: S3Settings) -> None:
    """Delete the savepoint at PATH (its manifest first)."""
    count = dispose(path, s3)
    click.echo(f"disposed of {path} ({count} files)", err=True)
