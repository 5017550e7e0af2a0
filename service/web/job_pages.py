"""The job-wide pages any worker serves: `/job` (HTML) and `/job.json`.

Each request gathers every worker's `/status.json` afresh through the job's consumer
group (service/monitoring/job_status.py), so the page shows the job as it is now, with
a worker that does not answer listed as such rather than left out.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from service.monitoring.job_status import JobView
from service.web.http_client import PeerUnreachable
from service.web.routing import Request, Response, Router
from service.web.status_page import CSS, REFRESH_S, clock, count

JOB_REFRESH_S = max(REFRESH_S, 5)


def add_job_pages(router: Router, view: JobView) -> Router:
    def snapshot() -> dict[str, Any] | Response:
        try:
            return view.snapshot()
        except PeerUnreachable as exc:
            return Response.text(503, str(exc))

    def job_json(_: Request) -> Response:
        body = snapshot()
        return body if isinstance(body, Response) else Response.json(200, body)

    def job_page(_: Request) -> Response:
        body = snapshot()
        return body if isinstance(body, Response) else Response(200, render(body).encode(),
                                                                 "text/html; charset=utf-8")

    router.add("GET", "/job", job_page)
    router.add("GET", "/job.json", job_json)
    return router


def _badge(worker: dict[str, Any]) -> str:
    if not worker["reachable"]:
        return '<span class="badge bad">unreachable</span>'
    kind = "ok" if worker["state"] == "running" and worker["ready"] else (
        "bad" if worker["state"] == "failed" else "wait")
    return f'<span class="badge {kind}">{escape(str(worker["state"]))}</span>'


def _workers(workers: list[dict[str, Any]]) -> str:
    rows = []
    for w in workers:
        last = w["last_checkpoint"]
        checkpoint = "-" if not last else f'{last["checkpoint_id"]} at {clock(last["started_at"])}'
        where = w["url"] or (w["advertised"][0] if w["advertised"] else "-")
        link = f'<a href="{escape(w["url"])}/">{escape(where)}</a>' if w["url"] else escape(where)
        rows.append(
            f'<tr data-worker="{escape(w["worker"])}"><td>{escape(w["worker"])}</td><td>{_badge(w)}</td>'
            f'<td class="topic">{link}</td><td class="num">{count(w["tasks"])}</td>'
            f'<td class="num">{count(w["records_in"])}</td><td class="num">{count(w["records_out"])}</td>'
            f'<td class="num">{count(w["lag"])}</td><td>{escape(checkpoint)}</td>'
            f'<td class="num">{count(w["restarts"])}</td>'
            f'<td class="error">{escape(w["error"] or w["last_error"] or "")}</td></tr>')
    return ('<section><h2>Workers</h2><table id="workers"><thead><tr><th>worker</th><th>state</th>'
            '<th>address</th><th class="num">tasks</th><th class="num">records in</th>'
            '<th class="num">records out</th><th class="num">consumer lag</th><th>last checkpoint</th>'
            f'<th class="num">restarts</th><th>error</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '</section>')


def _tasks(tasks: list[dict[str, Any]]) -> str:
    if not tasks:
        return '<section><h2>Tasks</h2><p>no partitions assigned</p></section>'
    rows = "".join(
        f'<tr data-task="{escape(t["task"])}"><td>{escape(t["stage"])}</td><td class="topic">{escape(t["topic"])}</td>'
        f'<td class="num">{t["partition"]}</td><td>{escape(t["worker"])}</td>'
        f'<td class="num">{count(t["position"])}</td><td class="num lag">{count(t["lag"])}</td>'
        f'<td class="num">{t["checkpoint_id"]}</td></tr>' for t in tasks)
    return (f'<section><h2>Tasks ({len(tasks)})</h2><table id="job-tasks"><thead><tr><th>stage</th>'
            '<th>topic</th><th class="num">partition</th><th>worker</th><th class="num">position</th>'
            '<th class="num">consumer lag</th><th class="num">checkpoint</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></section>")


def render(job: dict[str, Any]) -> str:
    totals = job["totals"]
    figures = [("workers", f'{totals["reachable"]} / {totals["workers"]}', "workers answering"),
               ("job-tasks-count", count(totals["tasks"]), "tasks"),
               ("job-records-in", count(totals["records_in"]), "records in"),
               ("job-records-out", count(totals["records_out"]), "records out"),
               ("job-lag", count(totals["lag"]), "consumer lag (records)"),
               ("job-last-checkpoint", str(totals["last_checkpoint_id"]), "newest checkpoint")]
    cells = "".join(f'<div id="{key}"><b>{value}</b><span>{label}</span></div>' for key, value, label in figures)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="refresh" content="{JOB_REFRESH_S}"><title>eos: job {escape(job["job"])}</title>'
        f"<style>{CSS}</style></head><body>"
        f'<header><h1>{escape(job["job"])}</h1><span class="sub">group {escape(job["group"])}</span>'
        f'<span class="sub">{totals["workers"]} workers</span></header><main>'
        f'<section><div class="figures">{cells}</div></section>'
        + _workers(job["workers"]) + _tasks(job["tasks"])
        + f'</main><footer>gathered at {clock(job["gathered_at"] or time.time())} from every worker of the group; '
        f'refreshes every {JOB_REFRESH_S} s. <a href="/job.json">job.json</a> · <a href="/">this worker</a>'
        "</footer></body></html>")
