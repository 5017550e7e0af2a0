"""Jobs reading and writing registry-framed records, on a real broker and a real schema
registry (Apicurio Registry, through Confluent's API), run as users run them.

The tests' producers and readers are Confluent's own serializers and deserializers
(tests/harness/registry_clients.py): what the job writes must decode with them, and what
they write must be read by the job, across a schema change made while the job runs.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import SCHEMA_REGISTRY_GROUP
from tests.harness.kafka import create_topics, read_all, unique_name
from tests.harness.oracle import check_running_sum
from tests.harness.ports import free_port
from tests.harness.registry_clients import (
    NOT_FRAMED,
    UNKNOWN_SCHEMA_ID,
    AvroOrderProducer,
    coupon_of,
    json_schema_values,
    protobuf_totals,
    register_json_schema,
)
from tests.harness.savepoints import eos, start_controlled, stop_with_savepoint
from tests.harness.scenario import RunningSum
from tests.harness.worker_process import REPO, WorkerProcess, WorkerSpec, wait_for
from tests.harness.workload import make_orders

pytestmark = [pytest.mark.kafka, pytest.mark.xdist_group(SCHEMA_REGISTRY_GROUP)]

EXAMPLE = REPO / "examples" / "registry_totals.py"
JSON_SCHEMA_JOB = REPO / "tests" / "jobs" / "registry_json_orders.py"


def _scenario(bootstrap: str, registry_url: str, tmp_path, records: int, *extra_args: str) -> RunningSum:
    """The example job over Avro orders, its registry named by the environment."""
    return RunningSum(bootstrap, tmp_path, records=records, spec_overrides={
        "job": EXAMPLE, "env": {"SCHEMA_REGISTRY_URL": registry_url}, "extra_args": list(extra_args)})


def _outputs_seen(scenario: RunningSum, decode) -> set[int]:
    return {decode(value)["last_id"] for _, value in scenario.outputs()}


def test_avro_orders_become_protobuf_totals_exactly_once_while_the_order_schema_evolves(
        bootstrap, schema_registry, tmp_path):
    scenario = _scenario(bootstrap, schema_registry.url, tmp_path, 3_000, "--error-policy", "dead-letter")
    producer = AvroOrderProducer(bootstrap, schema_registry.url, scenario.input)
    decode = protobuf_totals(schema_registry.url, scenario.output)
    orders = list(scenario.orders.values())
    old, new = orders[:1_500], orders[1_500:]

    producer.produce(old[:750], version=1, extra=[NOT_FRAMED])
    worker = scenario.start_worker()
    wait_for(lambda: len(_outputs_seen(scenario, decode)) >= 300, 120, 0.5, "outputs of version-1 orders")
    worker.kill()  # mid-run, with work past its last checkpoint
    producer.produce(old[750:], version=1)
    worker = scenario.start_worker()
    # The producer moves to version 2 while the job runs: a new optional field.
    producer.produce(new[:750], version=2, extra=[UNKNOWN_SCHEMA_ID])
    producer.produce(new[750:], version=2)
    wait_for(lambda: set(scenario.orders) <= _outputs_seen(scenario, decode), 180, 1.0,
             lambda: f"every order's output ({worker.log_tail(5)})")
    assert worker.terminate() == 0, worker.log_tail()

    outputs = scenario.outputs()
    report = check_running_sum(scenario.orders, outputs, decode=decode)
    assert report.ok, report.summary()
    coupons = {decode(value)["last_id"]: decode(value)["last_coupon"] for _, value in outputs}
    assert coupons == {o.id: None for o in old} | {o.id: coupon_of(o.id) for o in new}
    assert any(coupons.values()), "version-2 orders should carry coupons into the outputs"

    inputs = {value: (partition, offset) for partition, offset, _, value in
              read_all(bootstrap, scenario.input, with_meta=True)}
    dead = read_all(bootstrap, f"{scenario.group}-dlq", with_headers=True)
    assert sorted(value for _, value, _ in dead) == sorted([NOT_FRAMED, UNKNOWN_SCHEMA_ID]), \
        "each bad record exactly once in the dead-letter topic"
    for _, value, headers in dead:
        h = dict(headers)
        assert (h["eos.source.topic"].decode(), int(h["eos.source.partition"]), int(h["eos.source.offset"])) \
            == (scenario.input, *inputs[value])
        assert h["eos.error.class"] == b"SerdeError" and h["eos.operator"] == b"orders"
    messages = {value: dict(headers)["eos.error.message"].decode() for _, value, headers in dead}
    assert "not a schema-registry avro record" in messages[NOT_FRAMED]
    assert "a schema the registry does not have" in messages[UNKNOWN_SCHEMA_ID]


def test_a_savepoint_of_version_1_state_resumes_onto_version_2_orders(bootstrap, schema_registry, tmp_path):
    """State is the job's accumulators in eos's own codec (JSON), not registry-framed:
    a savepoint taken while orders were version 1 resumes onto version-2 orders."""
    scenario = _scenario(bootstrap, schema_registry.url, tmp_path, 2_000)
    producer = AvroOrderProducer(bootstrap, schema_registry.url, scenario.input)
    decode = protobuf_totals(schema_registry.url, scenario.output)
    orders = list(scenario.orders.values())
    old, new = orders[:1_000], orders[1_000:]
    producer.produce(old, version=1)
    worker = start_controlled(scenario).wait_ready()
    wait_for(lambda: len(_outputs_seen(scenario, decode)) >= 300, 120, 0.5, "outputs of version-1 orders")
    location = stop_with_savepoint([worker], tmp_path / "savepoints")

    state = eos("state", "read", location, "--uid", "totals")
    assert state.returncode == 0, state.stderr
    accumulators = [json.loads(line)["value"] for line in state.stdout.splitlines()]
    assert accumulators and all(a["last_coupon"] is None for a in accumulators)

    producer.produce(new, version=2)
    resumed = start_controlled(scenario, extra_args=["--from-savepoint", location])
    wait_for(lambda: set(scenario.orders) <= _outputs_seen(scenario, decode), 180, 1.0,
             lambda: f"every order's output ({resumed.process.log_tail(5)})")
    assert resumed.process.terminate() == 0, resumed.process.log_tail()
    report = check_running_sum(scenario.orders, scenario.outputs(), decode=decode)
    assert report.ok, report.summary()


def test_a_record_not_framed_by_the_registry_stops_the_job_naming_it(bootstrap, schema_registry, tmp_path):
    scenario = _scenario(bootstrap, schema_registry.url, tmp_path, 200)
    AvroOrderProducer(bootstrap, schema_registry.url, scenario.input).produce(
        scenario.orders.values(), version=1, extra=[NOT_FRAMED])
    (partition, offset), = [(p, o) for p, o, _, v in read_all(bootstrap, scenario.input, with_meta=True)
                            if v == NOT_FRAMED]
    worker = scenario.start_worker()
    assert worker.wait(120) == 2, worker.log_tail()
    assert (f"topic {scenario.input!r} partition {partition} offset {offset} (operator 'orders')"
            in worker.log_text()), worker.log_tail()
    assert "not a schema-registry avro record" in worker.log_text()


def test_json_schema_outputs_keep_each_order_as_its_writer_wrote_it(bootstrap, schema_registry, tmp_path):
    """No reader schema: each record reads as its own version has it. The registry is
    named by a job parameter."""
    source, sink = unique_name("orders"), unique_name("orders-json")
    create_topics(bootstrap, [source, sink], 2)
    orders = list(make_orders(400, 20).values())
    producer = AvroOrderProducer(bootstrap, schema_registry.url, source)
    producer.produce(orders[:200], version=1)
    producer.produce(orders[200:], version=2)
    worker = _json_worker(bootstrap, schema_registry.url, tmp_path, source, sink)
    decode = json_schema_values(schema_registry.url, sink)
    wait_for(lambda: len(read_all(bootstrap, sink)) >= len(orders), 120, 1.0,
             lambda: f"every order in {sink} ({worker.log_tail(5)})")
    assert worker.terminate() == 0, worker.log_tail()
    written = {v["id"]: v for v in (decode(value) for _, value in read_all(bootstrap, sink))}
    assert sorted(written) == [o.id for o in orders]
    for order in orders[:200]:
        assert written[order.id] == {"id": order.id, "user": order.user, "fields": ["amount", "id", "user"]}
    for order in orders[200:]:
        assert written[order.id]["fields"] == ["amount", "coupon", "id", "user"]


def test_a_schema_the_registry_refuses_stops_the_job_as_a_configuration_error(bootstrap, schema_registry,
                                                                              tmp_path):
    """The subject of the job's output holds a schema that the job's JSON Schema is not
    BACKWARD compatible with (it requires a field the old one lacks): nothing goes to the
    dead-letter topic, the worker exits 1 naming the topic."""
    source, sink = unique_name("orders"), unique_name("orders-json")
    create_topics(bootstrap, [source, sink], 2)
    AvroOrderProducer(bootstrap, schema_registry.url, source).produce(make_orders(20).values(), version=1)
    register_json_schema(schema_registry.url, f"{sink}-value", {
        "$schema": "http://json-schema.org/draft-07/schema#", "title": "OrderFields", "type": "object",
        "properties": {"id": {"type": "integer"}, "user": {"type": "string"}}, "required": ["id", "user"]})
    worker = _json_worker(bootstrap, schema_registry.url, tmp_path, source, sink, "--error-policy", "dead-letter")
    assert worker.wait(120) == 1, worker.log_tail()
    assert f"serde of topic {sink!r} (value): the schema registry refused the job's schema" in worker.log_text()


def test_a_registry_out_of_reach_stops_the_job_without_blaming_records(bootstrap, tmp_path, schema_registry):
    scenario = _scenario(bootstrap, schema_registry.url, tmp_path, 50, "--error-policy", "dead-letter")
    AvroOrderProducer(bootstrap, schema_registry.url, scenario.input).produce(scenario.orders.values(), version=1)
    nowhere = f"http://127.0.0.1:{free_port()}{schema_registry.url[len(schema_registry.base):]}"
    worker = scenario.start_worker(env={"SCHEMA_REGISTRY_URL": nowhere})
    assert worker.wait(120) == 1, worker.log_tail()
    assert "the schema registry is out of reach" in worker.log_text()
    assert read_all(bootstrap, f"{scenario.group}-dlq") == [], "no record is at fault"
    assert read_all(bootstrap, scenario.output) == []


def _json_worker(bootstrap: str, registry_url: str, tmp_path, source: str, sink: str, *extra: str) -> WorkerProcess:
    spec = WorkerSpec(bootstrap=bootstrap, group=unique_name("registry-json"), state_dir=tmp_path / "state",
                      storage=f"file://{tmp_path / 'checkpoints'}", job=JSON_SCHEMA_JOB, extra_args=list(extra),
                      params={"input": source, "output": sink, "schema.registry.url": registry_url})
    return WorkerProcess(spec, tmp_path / "worker.log")
