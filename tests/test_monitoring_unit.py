"""The HTTP side and the metric plumbing without Kafka: routing, the control access
rule, health, the status page, reading librdkafka statistics, restart counting."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from connectors.kafka_waits import KafkaWaits
from eos.errors import ConfigurationError
from service.membership.incarnation import Incarnation
from service.monitoring.kafka_stats import BrokerReachability, ConsumerLag, RecordsOut, partition_lag
from service.monitoring.metrics import WorkerMetrics
from service.monitoring.status import RUNNING, STARTING, CheckpointStatus, StatusBoard, TaskStatus, WorkerStatus
from service.web import status_page
from service.web.endpoints import add_worker_pages
from service.web.routing import ControlAccess, Response, Router, is_local
from service.web.server import HttpServer
from tests.harness.browser import table_rows

# The metric names of the starting design (shared/ARCHITECTURE.md), as scraped.
DESIGNED_METRICS = {
    "eos_checkpoints_completed_total", "eos_checkpoints_failed_total", "eos_checkpoint_last_duration_seconds",
    "eos_checkpoint_duration_seconds_bucket", "eos_checkpoint_last_size_bytes", "eos_checkpoint_alignment_seconds",
    "eos_records_in_total", "eos_records_out_total", "eos_consumer_lag", "eos_restarts_total",
    "eos_last_recovery_duration_seconds", "eos_state_keys", "eos_dlq_records_total",
}


def _status(**changes) -> WorkerStatus:
    values = dict(job="running-sum", group="g", worker="w1", state=RUNNING, ready=True, started_at=time.time(),
                  published_at=time.time(), processing_guarantee="exactly-once", checkpoint_interval_s=1.0,
                  checkpoint_storage="file:///tmp/c")
    values.update(changes)
    return WorkerStatus(**values)


def _get(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@pytest.fixture
def served():
    """A real server on a free loopback port with the worker pages and one control
    endpoint (as the savepoint endpoints will add theirs)."""
    metrics = WorkerMetrics("g", "w1")
    board = StatusBoard(_status(state=STARTING, ready=False))
    router = add_worker_pages(Router(), board, metrics.registry)
    calls: list[str] = []
    router.add("POST", "/control/poke", lambda request: (calls.append(request.client_ip), Response.text(202, "poked"))[1],
               control=True)
    server = HttpServer("127.0.0.1", 0, router).start()
    try:
        yield server, board, metrics, calls
    finally:
        server.stop()


# -- routing ---------------------------------------------------------------------------


def test_unknown_path_is_404(served):
    server, *_ = served
    status, body, _ = _get(server.url("/nope"))
    assert status == 404 and "/nope" in body


def test_wrong_method_is_405_naming_the_allowed_one(served):
    server, *_ = served
    status, _, headers = _get(server.url("/metrics"), method="POST")
    assert status == 405 and headers["Allow"] == "GET"
    status, _, headers = _get(server.url("/control/poke"))
    assert status == 405 and headers["Allow"] == "POST"


def test_control_endpoint_serves_a_local_caller(served):
    server, _, _, calls = served
    status, body, _ = _get(server.url("/control/poke"), method="POST")
    assert (status, body) == (202, "poked\n") and calls == ["127.0.0.1"]


def test_metrics_endpoint_serves_prometheus_text(served):
    server, _, metrics, _ = served
    metrics.labels(metrics.checkpoints_completed).inc(3)
    status, body, headers = _get(server.url("/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'eos_checkpoints_completed_total{job="g",worker="w1"} 3.0' in body


def test_routing_the_same_method_and_path_twice_is_refused():
    router = Router()
    router.add("GET", "/x", lambda r: Response.text(200, "x"))
    with pytest.raises(ValueError, match="already routed"):
        router.add("get", "/x", lambda r: Response.text(200, "y"))


# -- the control access rule ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_callers_are_local(address):
    assert is_local(address)


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.7", "::ffff:10.0.0.1", "2001:db8::1", "junk"])
def test_other_callers_are_not_local(address):
    assert not is_local(address)


def test_control_refuses_non_local_callers_when_nothing_is_configured():
    refusal = ControlAccess().refusal("10.1.2.3", "Bearer anything")
    assert refusal is not None and "local callers only" in refusal


def test_control_admits_a_remote_caller_only_from_an_allowed_network_with_the_token():
    access = ControlAccess("s3cret", ["10.0.0.0/8"])
    assert access.refusal("10.1.2.3", "Bearer s3cret") is None
    assert access.refusal("::ffff:10.1.2.3", "bearer s3cret") is None
    assert "not in the networks" in access.refusal("172.16.0.1", "Bearer s3cret")
    assert "token" in access.refusal("10.1.2.3", "Bearer wrong")
    assert "token" in access.refusal("10.1.2.3", None)
    assert access.refusal("127.0.0.1", None) is None  # local callers need no token


@pytest.mark.parametrize("token,networks", [("s3cret", []), (None, ["10.0.0.0/8"])])
def test_remote_control_needs_both_a_network_and_a_token(token, networks):
    with pytest.raises(ConfigurationError, match="both --control-allow"):
        ControlAccess(token, networks)


def test_a_malformed_control_network_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="--control-allow"):
        ControlAccess("s3cret", ["10.0.0.0/33"])


# -- health ----------------------------------------------------------------------------------


def test_healthz_is_503_until_recovery_finished_then_200(served):
    server, board, *_ = served
    status, body, _ = _get(server.url("/healthz"))
    assert status == 503 and "starting" in body
    board.publish(_status(ready=False))
    status, body, _ = _get(server.url("/healthz"))
    assert status == 503 and "recovering" in body
    board.publish(_status(ready=True))
    board.beat(time.monotonic())
    assert _get(server.url("/healthz"))[:2] == (200, "ok\n")


def test_healthz_is_503_when_the_loop_stops_turning(served):
    server, board, *_ = served
    board.publish(_status(ready=True))
    board.beat(time.monotonic() - board.stall_after_s - 1)
    status, body, _ = _get(server.url("/healthz"))
    assert status == 503 and "has not turned" in body


def _broker_report(*states: str) -> dict:
    brokers = {f"localhost:9092/{i}": {"state": state, "nodeid": i, "source": "learned"}
               for i, state in enumerate(states)}
    brokers["GroupCoordinator"] = {"state": states[0], "nodeid": -1, "source": "logical"}
    return {"brokers": brokers}


def _ready_board_watching_kafka(board: StatusBoard) -> tuple[BrokerReachability, KafkaWaits]:
    """A ready, turning worker's board, wired to both signals that Kafka is away."""
    brokers, waits = BrokerReachability(), KafkaWaits()
    board.kafka_unreachable = brokers.unreachable_for
    board.kafka_blocked = waits.blocked_for
    board.publish(_status(ready=True))
    board.beat(time.monotonic())
    return brokers, waits


def test_healthz_is_503_while_no_broker_is_reachable_and_200_when_one_is_back(served):
    server, board, *_ = served
    brokers, _ = _ready_board_watching_kafka(board)
    brokers.update(_broker_report("UP", "DOWN"), time.monotonic())
    assert _get(server.url("/healthz"))[:2] == (200, "ok\n")  # one broker up is enough
    brokers.update(_broker_report("DOWN", "CONNECT"), time.monotonic() - board.kafka_grace_s - 1)
    brokers.update(_broker_report("DOWN", "CONNECT"), time.monotonic())
    status, body, _ = _get(server.url("/healthz"))
    assert status == 503 and "Kafka unreachable" in body
    brokers.update({}, time.monotonic())  # a report without connections changes nothing
    assert _get(server.url("/healthz"))[0] == 503
    brokers.update(_broker_report("UP", "DOWN"), time.monotonic())
    assert _get(server.url("/healthz"))[:2] == (200, "ok\n")


def test_healthz_is_503_while_the_loop_waits_on_kafka_too_long(served):
    server, board, *_ = served
    _, waits = _ready_board_watching_kafka(board)
    with waits.waiting("commit_transaction"):
        assert _get(server.url("/healthz"))[0] == 200  # a commit in progress is normal
        with waits.waiting("init_transactions"):  # nested: the outer call's start counts
            waits.current = ("commit_transaction", time.monotonic() - board.blocked_grace_s - 1)
            status, body, _ = _get(server.url("/healthz"))
            assert status == 503 and "commit_transaction has been waiting" in body
    assert waits.current is None
    assert _get(server.url("/healthz"))[:2] == (200, "ok\n")


def test_a_short_blip_does_not_make_the_worker_unhealthy(served):
    server, board, *_ = served
    brokers, _ = _ready_board_watching_kafka(board)
    brokers.update(_broker_report("DOWN"), time.monotonic())
    assert _get(server.url("/healthz"))[0] == 200


def test_healthz_is_503_after_a_failure(served):
    server, board, *_ = served
    board.publish(_status(state="failed", ready=False, last_error="stopping: boom"))
    assert _get(server.url("/healthz"))[0] == 503


# -- the status page -------------------------------------------------------------------------


def _checkpoint(n: int, result: str = "committed", error: str | None = None) -> CheckpointStatus:
    return CheckpointStatus(n, "interval", time.time(), 0.05, 4, 4096, 1024, 10, result, error)


def test_status_page_lists_tasks_and_the_checkpoint_history_newest_first():
    status = _status(
        last_checkpoint_id=3,
        tasks=(TaskStatus("orders-0", "orders", "orders", 0, False, 120, 3, 7),
               TaskStatus("orders-1", "orders", "orders", 1, False, None, 0, None)),
        checkpoints=(_checkpoint(3), _checkpoint(2, "failed", "StorageError: disk full"), _checkpoint(1)))
    html = status_page.render(status)
    history = table_rows(html, "checkpoint-history")
    assert [cells[0] for _, cells in history] == ["3", "2", "1"]
    assert [cls for cls, _ in history] == ["checkpoint committed", "checkpoint failed", "checkpoint committed"]
    assert "StorageError: disk full" in history[1][1][-1]
    tasks = table_rows(html, "tasks")
    assert [cells[1:3] + cells[5:6] for _, cells in tasks] == [["orders", "0", "7"], ["orders", "1", "-"]]
    assert 'http-equiv="refresh"' in html


def test_status_page_escapes_what_came_from_outside():
    html = status_page.render(_status(job="<script>alert(1)</script>", last_error="bad <b>record</b>"))
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "bad &lt;b&gt;record" in html


def test_status_page_shows_a_checkpoint_in_progress():
    running = CheckpointStatus(9, "interval", time.time() - 2, 0.0, 4, 0, 0, 0, "in progress: persisted", None)
    html = status_page.render(_status(), running)
    assert "checkpoint 9 in progress (in progress: persisted)" in html


def test_status_json_is_the_published_snapshot(served):
    server, board, *_ = served
    board.publish(_status(last_checkpoint_id=5, checkpoints=(_checkpoint(5),)))
    status, body, _ = _get(server.url("/status.json"))
    snapshot = json.loads(body)
    assert status == 200 and snapshot["last_checkpoint_id"] == 5 and snapshot["checkpoints"][0]["result"] == "committed"


# -- metrics and librdkafka statistics ------------------------------------------------------------


def test_every_designed_metric_is_exported():
    assert DESIGNED_METRICS <= WorkerMetrics("g", "w").exported_names()


def test_partition_lag_reaches_zero_past_a_transaction_marker():
    # A drained transactional partition: the last record at 97, the commit marker at 98.
    assert partition_lag({"ls_offset": 99, "hi_offset": 99, "app_offset": 99, "lo_offset": 0}, 98) == 0
    assert partition_lag({"ls_offset": 500, "app_offset": 100, "lo_offset": 0}, 300) == 200  # processed past the report
    assert partition_lag({"ls_offset": 500, "app_offset": -1001, "lo_offset": 0}, None) == 500
    assert partition_lag({"ls_offset": -1001, "hi_offset": -1001, "app_offset": 5}, 5) is None


def _consumer_stats(partitions: dict[int, dict]) -> str:
    parts = {str(p): v for p, v in partitions.items()}
    parts["-1"] = {"ls_offset": -1001, "app_offset": -1001}
    return json.dumps({"name": "rdkafka#consumer-1", "topics": {"orders": {"partitions": parts}}})


def test_consumer_lag_is_reported_for_assigned_partitions_only_and_dropped_on_revoke():
    metrics = WorkerMetrics("g", "w1")
    assigned = {("orders", 0): 10, ("orders", 1): 0}
    lag = ConsumerLag(metrics, lambda: assigned)
    lag(_consumer_stats({0: {"ls_offset": 25, "app_offset": 10}, 1: {"ls_offset": 5, "app_offset": -1001},
                         2: {"ls_offset": 9, "app_offset": 0}}))
    assert lag.lag == {("orders", 0): 15, ("orders", 1): 5}
    del assigned[("orders", 1)]
    lag(_consumer_stats({0: {"ls_offset": 25, "app_offset": 25}}))
    exposed = {s.labels["partition"]: s.value for family in metrics.registry.collect()
               if family.name == "eos_consumer_lag" for s in family.samples}
    assert exposed == {"0": 0.0}


def test_unreadable_statistics_never_raise_into_the_client():
    ConsumerLag(WorkerMetrics("g", "w"), dict)("{not json")
    RecordsOut(WorkerMetrics("g", "w"))("{not json")


def _producer_stats(client: str, sent: dict[int, int]) -> str:
    parts = {str(p): {"txmsgs": n} for p, n in sent.items()}
    parts["-1"] = {"txmsgs": 0, "msgs": 999}
    return json.dumps({"name": client, "topics": {"totals": {"partitions": parts}}})


def test_records_out_keeps_growing_across_a_recreated_producer():
    metrics = WorkerMetrics("g", "w1")
    out = RecordsOut(metrics)
    out(_producer_stats("rdkafka#producer-1", {0: 100, 1: 50}))
    out(_producer_stats("rdkafka#producer-1", {0: 120, 1: 60}))
    out(_producer_stats("rdkafka#producer-2", {0: 5}))  # recreated: its counts start again
    assert out.total == 185
    assert metrics.registry.get_sample_value("eos_records_out_total",
                                             {"job": "g", "worker": "w1", "topic": "totals"}) == 185


# -- restarts across processes -----------------------------------------------------------------


def test_a_slot_whose_previous_process_did_not_stop_cleanly_counts_a_restart(tmp_path: Path):
    first = Incarnation(tmp_path, "g", "w1", "1")
    assert first.begin() == 0
    first.end(clean=False)  # stopped by an error (a kill never runs end() at all)
    second = Incarnation(tmp_path, "g", "w1", "2")
    assert second.begin() == 1
    second.end(clean=True)
    assert Incarnation(tmp_path, "g", "w1", "3").begin() == 1  # a clean stop is no restart
    assert Incarnation(tmp_path, "g", "w2", "4").begin() == 0  # slots count separately
