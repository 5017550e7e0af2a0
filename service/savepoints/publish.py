"""The savepoint's manifest, written by a worker of the job.

The manifest is what makes a savepoint exist, and it belongs beside the state files the
workers wrote, in storage the workers reach: a client on another machine (the host of a
docker-compose deployment, say) may not reach that storage at all, or reach it under
another path. So the client assembles the manifest from the workers' parts and hands it
to one of the workers (`POST /savepoints/manifest`, a control endpoint), which checks it
names the savepoint it has just written, checks every file's size in storage, and writes
the manifest atomically at the savepoint's location.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from eos.errors import EosError, SavepointError
from service.savepoints.control import WRITTEN, SavepointControl
from service.web.routing import Request, Response, Router
from statestore.savepoint_manifest import MANIFEST_NAME, SavepointManifest
from statestore.storage import S3Settings, open_storage
from statestore.storage.base import StorageError

log = logging.getLogger(__name__)

MANIFEST_PATH = "/savepoints/manifest"


def write_manifest(location: str, manifest: SavepointManifest, s3: S3Settings | None) -> None:
    """Checks every state file's size in storage, then writes the manifest, last."""
    try:
        storage = open_storage(location, s3)
        for entry in manifest.files():
            size = storage.size(entry.path)
            if size != entry.size:
                raise SavepointError(f"savepoint file {storage.describe(entry.path)} has {size} bytes, "
                                     f"its worker wrote {entry.size}")
        storage.put_atomic(MANIFEST_NAME, manifest.to_bytes())
    except StorageError as exc:
        raise SavepointError(f"cannot write the savepoint manifest under {location}: {exc}") from exc


def add_manifest_route(router: Router, control: SavepointControl) -> None:
    def post(request: Request) -> Response:
        try:
            body = orjson.loads(request.body or b"{}")
            savepoint_id, raw = body["id"], body["manifest"]
            manifest = SavepointManifest.from_bytes(orjson.dumps(raw), f"sent for savepoint {savepoint_id}")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return Response.json(400, {"error": f"expected {{\"id\", \"manifest\"}} ({exc})"})
        except EosError as exc:
            return Response.json(400, {"error": str(exc)})
        published: dict[str, Any] | None = control.published
        if published is None or published.get("id") != savepoint_id or manifest.id != savepoint_id:
            return Response.json(404, {"error": f"no savepoint {savepoint_id} on worker {control.worker_id}"})
        if published.get("phase") != WRITTEN:
            return Response.json(409, {"error": f"savepoint {savepoint_id} is {published.get('phase')}, not written"})
        try:
            write_manifest(published["location"], manifest, control.s3)
        except SavepointError as exc:
            return Response.json(409, {"error": str(exc)})
        log.info("savepoint %s: manifest written at %s", savepoint_id, published["location"])
        return Response.json(200, {"worker": control.worker_id, "location": published["location"]})

    router.add("POST", MANIFEST_PATH, post, control=True)
