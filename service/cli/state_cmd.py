"""`eos state read|get`: the values of a job's keyed state.

`read` dumps state from a savepoint or from checkpoints in storage as JSON lines, one
per key (value state) or map entry (map state), as Flink's State Processor API reads
savepoints. A savepoint says itself what each state is (value or map, its codec); a
checkpoint is a RocksDB snapshot, whose column families do not, so reading one needs
the job file that declares the states (`--job-file`, with its `-p` parameters).

`get` asks the running job for one key (`GET /state/{uid}/{key}` on the worker that
owns the key's partition).
"""

from __future__ import annotations

import base64
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import orjson

from eos.errors import ConfigurationError
from service.cli.options import (
    CHECKPOINT_STORAGE_ENV,
    JOB_HELP,
    KafkaSettings,
    job_argument,
    kafka_options,
    worker_urls_option,
)
from service.cli.storage_options import s3_options
from service.monitoring.job_status import JobView
from service.web.http_client import PeerUnreachable, call_json
from statestore.keys import encode_key
from statestore.savepoint_manifest import MANIFEST_NAME, MAP_STATE
from statestore.storage import S3Settings


@click.group("state")
def state() -> None:
    """Read keyed state: from a savepoint or checkpoint (read), from the running job (get)."""


@state.command("read")
@click.argument("location", envvar=CHECKPOINT_STORAGE_ENV)
@click.option("--uid", required=True, help="The stateful operator whose state to read.")
@click.option("--key", "key_text", default=None, help="Only this key (a string; with --key-json a JSON literal).")
@click.option("--key-json", is_flag=True, help="Read --key as JSON (numbers, lists for tuple keys).")
@click.option("--job", default=None, metavar="JOB",
              help="With checkpoint storage: " + JOB_HELP)
@click.option("--checkpoint", "selector", default=None,
              help="With checkpoint storage: this checkpoint id or snapshot name in every task (default: each "
                   "task's newest complete checkpoint).")
@click.option("--job-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="With checkpoint storage: the job's file, which declares what each state holds.")
@click.option("-p", "--param", "params", multiple=True, help="Job parameter NAME=VALUE for --job-file (repeatable).")
@s3_options
def read_cmd(location: str, uid: str, key_text: str | None, key_json: bool, job: str | None,
             selector: str | None, job_file: Path | None, params: tuple[str, ...], s3: S3Settings) -> None:
    """Dump the state of operator --uid from LOCATION as JSON lines: a savepoint (its
    directory or storage URL), or checkpoint storage (with --job and --job-file).

    Each line: {"uid", "state", "partition", "key", ["map_key",] "value", "checkpoint"}.
    A savepoint's state is the job's at the savepoint; a checkpoint's is its task's
    state at that checkpoint's offsets (`checkpoint` names it)."""
    wanted = None if key_text is None else encode_key(_key(key_text, key_json))
    from service.savepoints.resume import open_savepoint
    from statestore.storage import open_storage

    storage = open_storage(location, s3)
    if _has(storage, MANIFEST_NAME):
        lines = _savepoint_lines(location, s3, uid, open_savepoint)
    else:
        if job is None or job_file is None:
            raise click.UsageError(f"{location} holds no savepoint manifest; to read checkpoints give --job and "
                                   "--job-file (a checkpoint does not record what its states hold)")
        lines = _checkpoint_lines(storage, job, uid, selector, job_file, params)
    found = 0
    for entry in lines:
        if wanted is not None and entry.pop("_key_bytes") != wanted:
            continue
        entry.pop("_key_bytes", None)
        click.echo(orjson.dumps(entry, default=repr, option=orjson.OPT_NON_STR_KEYS).decode())
        found += 1
    if wanted is not None and not found:
        raise click.ClickException(f"no state of {uid!r} for key {key_text!r} in {location}")


def _has(storage: Any, key: str) -> bool:
    from statestore.storage.base import ObjectNotFound

    try:
        storage.get_bytes(key)
        return True
    except ObjectNotFound:
        return False


def _key(text: str, as_json: bool) -> Any:
    if not as_json:
        return text
    value = orjson.loads(text)
    return tuple(value) if isinstance(value, list) else value


def _entry(uid: str, name: str, kind: str, codec: str, partition: int, checkpoint: Any,
           obj: dict[str, Any], key_bytes: bytes) -> dict[str, Any]:
    """One output line from one canonical state line (statestore/savepoint_data.py)."""
    entry: dict[str, Any] = {"uid": uid, "state": name, "partition": partition}
    entry["key"] = obj["k"] if "k" in obj else {"base64": obj["kb"]}
    if kind == MAP_STATE:
        entry["map_key"] = obj["m"] if "m" in obj else {"base64": obj["mb"]}
    if "v" in obj:
        entry["value"] = obj["v"]
    elif codec == "pickle":
        entry["value"] = pickle.loads(base64.b64decode(obj["vb"]))  # noqa: S301 - the job's own state
    else:
        entry["value"] = {"base64": obj["vb"]}
    entry["checkpoint"] = checkpoint
    entry["_key_bytes"] = key_bytes
    return entry


def _savepoint_lines(location: str, s3: S3Settings, uid: str, open_savepoint: Any) -> Iterator[dict[str, Any]]:
    from service.savepoints.resume import SavepointFiles
    from statestore.savepoint_data import read_state_file

    manifest, storage = open_savepoint(location, s3)
    states = [s for s in manifest.states if s.uid == uid]
    if not states:
        raise click.ClickException(f"savepoint {manifest.id} holds no state of operator {uid!r}; it has: "
                                   f"{', '.join(sorted({s.uid for s in manifest.states})) or 'none'}")
    cache = Path(tempfile.mkdtemp(prefix="eos-state-read-"))
    try:
        files = SavepointFiles(storage, cache)
        for st in states:
            for f in st.files:
                for key_bytes, _, obj in read_state_file(files.local(f), f, files.where(f), st.kind):
                    yield _entry(uid, st.name, st.kind, st.codec, f.partition, f"savepoint {manifest.id}", obj,
                                 key_bytes)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _checkpoint_lines(storage: Any, job: str, uid: str, selector: str | None, job_file: Path,
                      params: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    from service.job.loader import load_job
    from service.job.planner import plan
    from service.runtime.config import parse_key_values
    from service.savepoints.schema import declared_states
    from statestore.catalog import scan
    from statestore.digests import DigestCache
    from statestore.rocks import TaskStore
    from statestore.savepoint_data import state_lines
    from statestore.snapshots import SnapshotRestorer

    declared = {cf: d for cf, d in declared_states(plan(load_job(job_file, parse_key_values(params, "-p")), job)).items()
                if d.uid == uid}
    if not declared:
        raise click.ClickException(f"the job in {job_file} declares no state of operator {uid!r}")
    catalogs = [c for c in scan(storage, job) if c.task.rpartition("-")[0] == next(iter(declared.values())).stage.topic]
    if not catalogs:
        raise click.ClickException(f"no checkpoints of job {job!r} for operator {uid!r} in {storage.describe('')}")
    for catalog in catalogs:
        record = catalog.find(selector) if selector is not None else catalog.newest_complete
        if record is None or record.manifest is None:
            click.echo(f"warning: task {catalog.task} has no complete checkpoint {selector or ''}".rstrip(), err=True)
            continue
        manifest = record.manifest
        click.echo(f"task {catalog.task}: checkpoint {manifest.checkpoint_id} ({record.snapshot}), offset "
                   f"{manifest.source_offset}", err=True)
        work = Path(tempfile.mkdtemp(prefix="eos-state-read-"))
        try:
            SnapshotRestorer(storage, catalog.prefix, DigestCache()).restore(manifest, work, [])
            store = TaskStore(work, manifest.column_families)
            try:
                for cf, d in sorted(declared.items()):
                    if cf not in store.column_families:
                        continue
                    for line in state_lines(store.items(cf), d.kind, d.codec.name):
                        obj = orjson.loads(line)
                        key_bytes = encode_key(obj["k"]) if "k" in obj else b"\x00" + base64.b64decode(obj["kb"])
                        yield _entry(uid, d.name, d.kind, d.codec.name, manifest.partition,
                                     manifest.checkpoint_id, obj, key_bytes)
            finally:
                store.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


@state.command("get", help="The state of one key from the running JOB, as the worker that owns the key's "
                           f"partition has it now. {JOB_HELP}")
@job_argument()
@click.option("--uid", required=True, help="The stateful operator whose state to read.")
@click.option("--key", "key_text", required=True, help="The key (a string; with --key-json a JSON literal).")
@click.option("--key-json", is_flag=True, help="Read --key as JSON (numbers, lists for tuple keys).")
@kafka_options(required=False, help_suffix=" Finds the job's workers; not needed with --worker.")
@worker_urls_option
def get_cmd(job: str, uid: str, key_text: str, key_json: bool, kafka: KafkaSettings, workers: tuple[str, ...]) -> None:
    urls = list(workers) or [u for m in JobView(job, kafka.client_config()).members() for u in m.advertised[:1]]
    if not urls:
        raise click.ClickException(f"job {job!r} has no workers in its consumer group")
    path = f"/state/{quote(uid, safe='')}/{quote(key_text, safe='')}" + ("?key=json" if key_json else "")
    tried: list[str] = []
    candidates = list(urls)
    while candidates:
        url = candidates.pop(0).rstrip("/")
        try:
            status, body = call_json(url + path, timeout_s=30, follow_redirects=False)
        except PeerUnreachable as exc:
            tried.append(str(exc))
            continue
        if status == 307:
            candidates = list(body.get("urls") or []) + [u for u in candidates if u not in body.get("urls", [])]
            tried.append(f"{url}: the key's partition is worker {body.get('owner')}'s")
            continue
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        if status != 200:
            sys.exit(1)
        return
    raise ConfigurationError(f"no worker answered for key {key_text!r}: {'; '.join(tried)}")
