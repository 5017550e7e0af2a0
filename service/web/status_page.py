"""The status page: one server-rendered HTML document from one `WorkerStatus`.

Plain HTML and a little CSS, refreshed by the browser every few seconds; no scripts.
Every value that came from outside (topic names, errors) is escaped.
"""

from __future__ import annotations

import time
from html import escape

from service.monitoring.status import RUNNING, CheckpointStatus, WorkerStatus
from service.monitoring.units import human_bytes

REFRESH_S = 2

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:18px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:19px;margin:0}header .sub{color:#b8c0cc}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 16px;margin-bottom:14px}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 10px;border-bottom:1px solid #eceef2;white-space:nowrap}
th{color:#5b6575;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#dff3e4;color:#1c6b34}.bad{background:#fbe2e2;color:#9b1c1c}.wait{background:#fff1d6;color:#8a5a00}
.figures{display:flex;gap:28px;flex-wrap:wrap}.figures div{min-width:120px}
.figures b{display:block;font-size:20px;font-variant-numeric:tabular-nums}.figures span{color:#5b6575;font-size:12px}
td.error{white-space:normal;color:#9b1c1c;font-size:12px}td.topic{white-space:normal;word-break:break-all}
section{overflow-x:auto}
pre{white-space:pre-wrap;margin:0;color:#9b1c1c}
footer{color:#7a8494;font-size:12px;padding:0 24px 20px}
"""


def clock(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _state_badge(status: WorkerStatus) -> str:
    kind = "ok" if status.state == RUNNING and status.ready else ("bad" if status.state == "failed" else "wait")
    label = status.state if status.ready or status.state != RUNNING else "recovering"
    return f'<span class="badge {kind}" id="worker-state">{escape(label)}</span>'


def _result_badge(checkpoint: CheckpointStatus) -> str:
    kind = {"committed": "ok", "failed": "bad"}.get(checkpoint.result, "wait")
    return f'<span class="badge {kind}">{escape(checkpoint.result)}</span>'


def _figures(status: WorkerStatus, now: float) -> str:
    total_lag = sum(t.lag for t in status.tasks if t.lag is not None)
    lag_known = any(t.lag is not None for t in status.tasks)
    figures = [
        ("last-checkpoint", str(status.last_checkpoint_id), "last completed checkpoint"),
        ("records-in", count(status.records_in), "records in"),
        ("records-out", count(status.records_out), "records out"),
        ("total-lag", count(total_lag) if lag_known else "-", "consumer lag (records)"),
        ("restarts", str(status.restarts), "restarts"),
        ("uptime", _seconds(max(0.0, now - status.started_at)), "up"),
    ]
    cells = "".join(f'<div id="{key}"><b>{value}</b><span>{label}</span></div>' for key, value, label in figures)
    return f'<section><div class="figures">{cells}</div></section>'


def _current(status: WorkerStatus, in_progress: CheckpointStatus | None, now: float) -> str:
    if in_progress is not None:
        text = (f"checkpoint {in_progress.checkpoint_id} in progress ({escape(in_progress.result)}), "
                f"running for {_seconds(max(0.0, now - in_progress.started_at))}")
    else:
        done = next((c for c in status.checkpoints if c.result == "committed"), None)
        text = "no checkpoint completed yet" if done is None else (
            f"last completed: checkpoint {done.checkpoint_id} at {clock(done.started_at)}, "
            f"took {_seconds(done.duration_s)}, {human_bytes(done.size_bytes)} of state")
    every = f"every {_seconds(status.checkpoint_interval_s)}" if status.checkpoint_interval_s > 0 else "disabled"
    return (f'<section><h2>Current checkpoint</h2><p id="current-checkpoint">{text}</p>'
            f'<p class="sub">checkpoints {every} to {escape(status.checkpoint_storage)}; '
            f'{escape(status.processing_guarantee)}</p></section>')


def _tasks(status: WorkerStatus) -> str:
    if not status.tasks:
        return '<section><h2>Tasks</h2><p>no partitions assigned</p></section>'
    rows = "".join(
        f'<tr data-task="{escape(t.task)}"><td>{escape(t.stage)}</td><td class="topic">{escape(t.topic)}</td>'
        f'<td class="num">{t.partition}</td><td>{"yes" if t.stateful else "no"}</td>'
        f'<td class="num">{count(t.position)}</td><td class="num lag">{count(t.lag)}</td>'
        f'<td class="num">{t.checkpoint_id}</td></tr>'
        for t in sorted(status.tasks, key=lambda t: (t.stage, t.topic, t.partition)))
    return (f'<section><h2>Tasks and partitions ({len(status.tasks)})</h2><table id="tasks"><thead><tr>'
            '<th>stage</th><th>topic</th><th class="num">partition</th><th>stateful</th>'
            '<th class="num">position</th><th class="num">consumer lag</th><th class="num">checkpoint</th>'
            f"</tr></thead><tbody>{rows}</tbody></table></section>")


def _history(checkpoints: tuple[CheckpointStatus, ...]) -> str:
    rows = "".join(
        f'<tr class="checkpoint {escape(c.result)}"><td class="num">{c.checkpoint_id}</td>'
        f"<td>{escape(c.reason)}</td><td>{clock(c.started_at)}</td>"
        f'<td class="num">{_seconds(c.duration_s)}</td><td class="num">{c.tasks}</td>'
        f'<td class="num">{human_bytes(c.size_bytes)}</td><td class="num">{human_bytes(c.uploaded_bytes)}</td>'
        f'<td class="num">{count(c.state_keys)}</td><td>{_result_badge(c)}</td>'
        f'<td class="error">{escape(c.error or "")}</td></tr>'
        for c in checkpoints)
    if not rows:
        rows = '<tr><td colspan="10">none yet</td></tr>'
    return ('<section><h2>Recent checkpoints</h2><table id="checkpoint-history"><thead><tr>'
            '<th class="num">id</th><th>reason</th><th>start</th><th class="num">duration</th>'
            '<th class="num">tasks</th><th class="num">size</th><th class="num">uploaded</th>'
            '<th class="num" title="RocksDB estimate">state keys (est.)</th><th>result</th><th>error</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></section>")


def _last_error(status: WorkerStatus) -> str:
    if not status.last_error:
        return '<section><h2>Last error</h2><p id="last-error">none</p></section>'
    return (f'<section><h2>Last error</h2><p>at {clock(status.last_error_at)}</p>'
            f'<pre id="last-error">{escape(status.last_error)}</pre></section>')


def render(status: WorkerStatus, in_progress: CheckpointStatus | None = None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    title = f"{status.job} / {status.worker}"
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="refresh" content="{REFRESH_S}"><title>eos: {escape(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{escape(status.job)}</h1><span class=\"sub\">group {escape(status.group)}</span>"
        f"<span class=\"sub\">worker {escape(status.worker)}</span>{_state_badge(status)}</header><main>"
        + _figures(status, now) + _current(status, in_progress, now) + _tasks(status)
        + _history(status.checkpoints) + _last_error(status)
        + f"</main><footer>as of {clock(status.published_at)}; refreshes every {REFRESH_S} s. "
        "<a href=\"/metrics\">metrics</a> · <a href=\"/healthz\">health</a> · "
        "<a href=\"/status.json\">status.json</a></footer></body></html>"
    )
