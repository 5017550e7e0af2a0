"""The worker's pages: `/` (status), `/status.json`, `/metrics`, `/healthz`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from service.monitoring.status import CheckpointStatus, StatusBoard
from service.web import status_page
from service.web.routing import Request, Response, Router


def add_worker_pages(router: Router, board: StatusBoard, registry: CollectorRegistry,
                     in_progress: Callable[[], CheckpointStatus | None] = lambda: None) -> Router:
    def page(_: Request) -> Response:
        html = status_page.render(board.current, in_progress())
        return Response(200, html.encode(), "text/html; charset=utf-8")

    def status_json(_: Request) -> Response:
        body = dataclasses.asdict(board.current)
        current = in_progress()
        body["in_progress"] = dataclasses.asdict(current) if current is not None else None
        return Response.json(200, body)

    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept"))
        return Response(200, encoder(registry), content_type)

    def healthz(_: Request) -> Response:
        healthy, why = board.health()
        return Response.text(200 if healthy else 503, why)

    router.add("GET", "/", page)
    router.add("GET", "/status.json", status_json)
    router.add("GET", "/metrics", metrics)
    router.add("GET", "/healthz", healthz)
    return router
