"""`eos checkpoints list|show|verify STORAGE_URL`: what checkpoint storage holds.

Reads storage only (and, with --bootstrap-servers, the job's committed offsets to say
which snapshot each task would restore). Never writes or deletes anything.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from tqdm import tqdm

from service.cli.options import CHECKPOINT_STORAGE_ENV, JOB_HELP, bootstrap_option
from service.cli.storage_options import s3_options
from service.monitoring.units import human_bytes
from statestore.catalog import COMPLETE, SnapshotRecord, TaskCatalog, scan, verify
from statestore.storage import S3Settings, open_storage


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + "Z" if seconds else "-"


def _committed_snapshots(bootstrap: str, catalogs: list[TaskCatalog]) -> dict[tuple[str, str], str]:
    """(job, task) -> the snapshot its committed offset names: what a restart restores.
    The group's completed commits: a transaction a killed worker left open is not waited
    for (a restart ends it)."""
    from confluent_kafka import TopicPartition

    from connectors.offsets import ClusterOffsets
    from service.checkpointing.recovery import parse_metadata

    offsets = ClusterOffsets({"bootstrap.servers": bootstrap})
    result: dict[tuple[str, str], str] = {}
    for job in sorted({c.job for c in catalogs}):
        partitions = []
        for catalog in (c for c in catalogs if c.job == job):
            topic, _, partition = catalog.task.rpartition("-")
            if topic and partition.isdigit():
                partitions.append(TopicPartition(topic, int(partition)))
        for tp in offsets.settled_commits(job, partitions):
            reference = parse_metadata(tp.metadata)
            if reference is not None and reference.snapshot is not None:
                result[(job, f"{tp.topic}-{tp.partition}")] = reference.snapshot
    return result


def _scan(url: str, s3: S3Settings, job: str | None, task: str | None) -> tuple[Any, list[TaskCatalog]]:
    storage = open_storage(url, s3)
    catalogs = scan(storage, job, task)
    if not catalogs:
        where = f"{url} (job {job!r})" if job else url
        raise click.ClickException(f"no checkpoints found in {where}")
    return storage, catalogs


def _status(record: SnapshotRecord, catalog: TaskCatalog, committed: str | None) -> str:
    if record.status != COMPLETE:
        return record.status
    marks = []
    if record.snapshot == committed:
        marks.append("committed")
    if record.snapshot in catalog.retained():
        marks.append("retained")
    return COMPLETE + (f" ({', '.join(marks)})" if marks else "")


def _record_json(record: SnapshotRecord, catalog: TaskCatalog, committed: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"snapshot": record.snapshot, "checkpoint_id": record.checkpoint_id,
                            "status": record.status, "problem": record.problem,
                            "retained": record.snapshot in catalog.retained(),
                            "committed": record.snapshot == committed if committed else None}
    m = record.manifest
    if m is not None:
        body.update(created_at=m.created_at, worker=m.worker, source_offset=m.source_offset,
                    total_bytes=m.total_bytes, uploaded_bytes=m.uploaded_bytes, files=len(m.files),
                    state_keys=m.state_keys, lineage=list(m.lineage))
    else:
        body.update(stored_bytes=record.own_bytes, modified=record.modified)
    return body


@click.group("checkpoints")
def checkpoints() -> None:
    """Inspect and verify checkpoints in checkpoint storage (read-only)."""


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """STORAGE_URL, --job, --task and the S3 flags, shared by every sub-command."""
    command = click.option("--task", default=None, help="Only this task ({topic}-{partition}).")(command)
    command = click.option("--job", default=None, metavar="JOB", help="Only this job. " + JOB_HELP)(command)
    command = s3_options(command)
    return click.argument("storage_url", envvar=CHECKPOINT_STORAGE_ENV)(command)


@checkpoints.command("list")
@_common
@bootstrap_option(required=False, help_suffix=" Also read the jobs' committed offsets to mark the snapshot "
                                              "each task restores.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_checkpoints(storage_url: str, job: str | None, task: str | None, s3: S3Settings,
                     bootstrap_servers: str | None, as_json: bool) -> None:
    """Every task's checkpoints: ids, times, sizes, offsets, keys and state."""
    _, catalogs = _scan(storage_url, s3, job, task)
    committed = _committed_snapshots(bootstrap_servers, catalogs) if bootstrap_servers else {}
    if as_json:
        body = [{"job": c.job, "task": c.task,
                 "snapshots": [_record_json(r, c, committed.get((c.job, c.task))) for r in c.snapshots],
                 "shared_files": len(c.shared), "shared_bytes": sum(e.size for e in c.shared.values()),
                 "unreferenced_shared_files": c.unreferenced_shared()} for c in catalogs]
        click.echo(json.dumps(body, indent=2))
        return
    header = f"{'ID':>6}  {'SNAPSHOT':<28} {'CREATED (UTC)':<20} {'OFFSET':>9} {'KEYS':>9} " \
             f"{'FILES':>5} {'SIZE':>10} {'UPLOADED':>10}  STATUS"
    for catalog in catalogs:
        click.echo(f"job {catalog.job}  task {catalog.task}")
        click.echo(header)
        for record in catalog.snapshots:
            status = _status(record, catalog, committed.get((catalog.job, catalog.task)))
            m = record.manifest
            if m is None:
                click.echo(f"{record.checkpoint_id or '?':>6}  {record.snapshot:<28} {_when(record.modified):<20} "
                           f"{'-':>9} {'-':>9} {'-':>5} {human_bytes(record.own_bytes):>10} {'-':>10}  "
                           f"{status}: {record.problem}")
                continue
            click.echo(f"{m.checkpoint_id:>6}  {record.snapshot:<28} {_when(m.created_at):<20} "
                       f"{m.source_offset:>9} {sum(m.state_keys.values()):>9} {len(m.files):>5} "
                       f"{human_bytes(m.total_bytes):>10} {human_bytes(m.uploaded_bytes):>10}  {status}")
        stray = catalog.unreferenced_shared()
        shared_bytes = sum(e.size for e in catalog.shared.values())
        click.echo(f"  shared: {len(catalog.shared)} files, {human_bytes(shared_bytes)}"
                   + (f"; {len(stray)} not listed by any manifest" if stray else "") + "\n")


@checkpoints.command("show")
@_common
@click.option("--checkpoint", "selector", default=None,
              help="Checkpoint id or snapshot name (default: the newest complete one).")
def show_checkpoint(storage_url: str, job: str | None, task: str | None, s3: S3Settings,
                    selector: str | None) -> None:
    """One checkpoint per task in full: manifest fields, lineage and every file."""
    storage, catalogs = _scan(storage_url, s3, job, task)
    missing = []
    for catalog in catalogs:
        record = catalog.find(selector)
        if record is None:
            missing.append(catalog.task)
            continue
        click.echo(f"job {catalog.job}  task {catalog.task}  snapshot {record.snapshot}  [{record.status}]")
        if record.manifest is None:
            click.echo(f"  {record.problem}; {human_bytes(record.own_bytes)} stored\n")
            continue
        m = record.manifest
        stored = dict(catalog.shared)
        own_prefix = f"{catalog.prefix}/"
        for entry in storage.list_entries(f"{catalog.prefix}/{record.snapshot}"):
            stored[entry.key[len(own_prefix):]] = entry
        click.echo(f"  checkpoint {m.checkpoint_id}, topic {m.topic} partition {m.partition}, "
                   f"source offset {m.source_offset}")
        click.echo(f"  created {_when(m.created_at)} by worker {m.worker}")
        click.echo(f"  size {human_bytes(m.total_bytes)} ({m.total_bytes} bytes), uploaded "
                   f"{human_bytes(m.uploaded_bytes)} ({m.uploaded_bytes} bytes)")
        keys = ", ".join(f"{cf}={n}" for cf, n in sorted(m.state_keys.items())) or "none"
        click.echo(f"  state keys (estimate): {keys}")
        click.echo(f"  lineage: {', '.join(m.lineage) or 'none'}")
        click.echo(f"  files ({len(m.files)}):")
        for entry in m.files:
            obj = stored.get(entry.key)
            presence = "stored" if obj is not None and obj.size == entry.size else (
                "MISSING" if obj is None else f"SIZE {obj.size} != {entry.size}")
            click.echo(f"    {entry.key:<78} {entry.size:>12}  {entry.sha256[:16]}  {presence}")
        click.echo("")
    if missing:
        raise click.ClickException(f"no checkpoint {selector or '(complete)'} for task(s) {', '.join(missing)}")


@checkpoints.command("verify")
@_common
@click.option("--checkpoint", "selector", default=None,
              help="Only this checkpoint id or snapshot name (default: every snapshot).")
def verify_checkpoints(storage_url: str, job: str | None, task: str | None, s3: S3Settings,
                       selector: str | None) -> None:
    """Recomputes the checksum of every file the manifests list. Exits 1 naming every
    missing, truncated or corrupt file and every damaged manifest."""
    storage, catalogs = _scan(storage_url, s3, job, task)

    def select(catalog: TaskCatalog) -> list[SnapshotRecord]:
        if selector is None:
            return catalog.snapshots
        record = catalog.find(selector)
        return [record] if record is not None else []

    total = sum(f.size for c in catalogs for r in select(c) if r.manifest for f in r.manifest.files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="verifying", file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        report = verify(storage, catalogs, select, progress=bar.update)
    partial = [f"{c.job}/{c.task}/{r.snapshot}" for c in catalogs for r in select(c) if r.status == "partial"]
    for damaged in report.damaged:
        click.echo(f"DAMAGED MANIFEST {damaged}")
    for problem in report.problems:
        click.echo(f"BAD FILE {problem.location}: {problem.reason} (listed by {', '.join(problem.snapshots)})")
    for name in partial:
        click.echo(f"note: {name} has no manifest (an unfinished attempt; not restorable, not an error)")
    summary = (f"checked {report.snapshots} snapshots, {report.files} files, "
               f"{human_bytes(report.bytes)}: ")
    if report.ok:
        click.echo(summary + "all intact")
        return
    click.echo(summary + f"{len(report.problems)} bad files, {len(report.damaged)} damaged manifests")
    sys.exit(1)
