"""`eos savepoint trigger|stop|list|show|dispose`."""

from __future__ import annotations

import time
from dataclasses import asdict

import click
import orjson

from service.cli.storage_options import s3_options
from service.savepoints.catalog import INCOMPLETE, USABLE, dispose, list_savepoints
from service.savepoints.client import take_savepoint
from service.savepoints.resume import open_savepoint
from statestore.savepoint_manifest import SavepointManifest
from statestore.storage import S3Settings

_jobs = click.option("--job", "jobs", multiple=True, required=True, metavar="URL",
                     help="A worker's HTTP address (its --http-port), e.g. http://127.0.0.1:8081; repeat for "
                          "every worker of the job's group.")
_target = click.option("--target", default=None, metavar="DIR",
                       help="Directory (path or storage URL) to write the savepoint under; default: the "
                            "workers' --savepoint-dir.")
_token = click.option("--token", envvar="EOS_CONTROL_TOKEN", default=None,
                      help="Bearer token for remote workers (env EOS_CONTROL_TOKEN).")
_timeout = click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=1),
                        help="Seconds to wait for the workers to drain and write.")


@click.group()
def savepoint() -> None:
    """Savepoints: take one (trigger, stop), list, show and dispose of them."""


def _take(mode: str, jobs: tuple[str, ...], target: str | None, token: str | None, timeout: float,
          s3: S3Settings) -> None:
    result = take_savepoint(list(jobs), mode=mode, target=target, token=token, timeout_s=timeout, s3=s3,
                            say=lambda text: click.echo(text, err=True))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    manifest = result.manifest
    click.echo(f"savepoint {manifest.id} of job {manifest.job} (group {manifest.group}): "
               f"{manifest.total_keys} keys, {len(manifest.positions)} partitions, "
               f"{len(manifest.workers)} worker(s), {result.seconds:.1f}s"
               + ("; the job stopped" if mode == "stop" else ""), err=True)
    click.echo(result.location)


@savepoint.command()
@_jobs
@_target
@_token
@_timeout
@s3_options
def trigger(jobs: tuple[str, ...], target: str | None, token: str | None, timeout: float, s3: S3Settings) -> None:
    """Take a savepoint; the job keeps running. Prints the savepoint's location."""
    _take("trigger", jobs, target, token, timeout, s3)


@savepoint.command()
@_jobs
@_target
@_token
@_timeout
@s3_options
def stop(jobs: tuple[str, ...], target: str | None, token: str | None, timeout: float, s3: S3Settings) -> None:
    """Stop with a savepoint: sources stop, everything in flight drains, a final checkpoint
    commits, the savepoint is written and the workers exit 0. Prints its location."""
    _take("stop", jobs, target, token, timeout, s3)


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
