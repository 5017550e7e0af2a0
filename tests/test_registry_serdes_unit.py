"""Serdes bound to their topic and field when a job is planned, a schema registry's
settings, and Protobuf messages as plain values. No broker, no registry: binding is
recorded by a serde of the tests' own (the seam is `Serde.binder`, which we own)."""

from __future__ import annotations

import pytest

from connectors.registry import SchemaRegistry
from connectors.registry import protobuf_values
from connectors.serdes import BYTES, JSON, KEY, PICKLE, STRING, Serde
from eos.errors import ConfigurationError
from service.job.api import Job
from service.job.planner import plan
from tests.harness.registry_clients import user_total_type


def recording(name: str, bindings: list) -> Serde:
    """A serde that records where it is bound and returns a copy that says so."""

    def bind(topic: str, field: str, writes: bool) -> Serde:
        bindings.append((name, topic, field, writes))
        return Serde(f"{name}", JSON.serialize, JSON.deserialize, binder=bind)

    return Serde(name, JSON.serialize, JSON.deserialize, binder=bind)


def test_serdes_without_a_binder_are_themselves_wherever_they_are_bound():
    for serde in (JSON, STRING, BYTES, KEY, PICKLE):
        assert serde.bound("t", "value", writes=True) is serde


def test_sources_sinks_and_global_tables_are_bound_to_their_own_topic_and_field():
    bindings: list = []
    job = Job("j")
    users = job.global_table("users", key=recording("users-key", bindings), value=recording("users", bindings))
    (job.source("orders", key=recording("orders-key", bindings), value=recording("orders", bindings))
        .join(users, lambda order, user: order, key=lambda order: order["user"])
        .sink("out", key=recording("out-key", bindings), value=recording("out", bindings)))
    plan(job, "g")
    assert sorted(bindings) == sorted([
        ("orders-key", "orders", "key", False), ("orders", "orders", "value", False),
        ("out-key", "out", "key", True), ("out", "out", "value", True),
        ("users-key", "users", "key", False), ("users", "users", "value", False)])


def test_a_repartition_serde_is_bound_to_the_repartition_topic_for_both_sides():
    bindings: list = []
    job = Job("j")
    (job.source("orders", value=JSON)
        .map(lambda order: order)  # the value changed: the key_by serialises with its serde
        .key_by(lambda order: order["user"], value=recording("repartition", bindings), uid="by-user")
        .reduce(lambda a, b: b, uid="last")
        .sink("out", value=JSON))
    p = plan(job, "g")
    assert sorted(bindings) == [("repartition", "g-by-user-repartition", "value", False),
                                ("repartition", "g-by-user-repartition", "value", True)]
    assert p.stage_of("g-by-user-repartition").value_serde.name == "repartition"


def test_forwarded_bytes_are_read_downstream_with_the_source_topics_binding():
    bindings: list = []
    source_serde = recording("orders", bindings)
    job = Job("j")
    (job.source("orders", value=source_serde)
        .key_by(lambda order: order["user"], uid="by-user")
        .reduce(lambda a, b: b, uid="last")
        .sink("out", value=JSON))
    p = plan(job, "g")
    assert bindings == [("orders", "orders", "value", False)], "the forwarded bytes are the source's"
    assert p.stage_of("g-by-user-repartition").value_serde is p.stage_of("orders").value_serde


def test_keys_written_to_meet_a_tables_keys_are_bound_to_the_tables_topic():
    """A stream re-keyed to join a table writes its keys as the table's producers do,
    so the same key gets the same bytes (and schema id), hence the same partition."""
    bindings: list = []
    job = Job("j")
    users = job.table("users", key=recording("users-key", bindings), value=JSON, uid="users")
    (job.source("orders", value=JSON)
        .key_by(lambda order: order["user"], uid="by-user")
        .join(users, lambda order, user: order)
        .sink("out", value=JSON))
    plan(job, "g")
    assert ("users-key", "users", "key", True) in bindings


def test_planning_a_job_again_binds_the_declared_serdes_anew():
    bindings: list = []
    job = Job("j")
    job.source("orders", value=JSON).sink("out", value=recording("out", bindings))
    plan(job, "g1")
    plan(job, "g2")
    assert bindings == [("out", "out", "value", True)] * 2


def test_a_sink_whose_serde_cannot_write_is_refused_when_the_job_is_planned():
    registry = SchemaRegistry("http://registry.invalid:8081")
    job = Job("j")
    job.source("orders", value=registry.avro()).sink("out", value=registry.avro())
    with pytest.raises(ConfigurationError, match="avro serde of topic 'out' \\(value\\) writes records but was "
                                                 "given no schema"):
        plan(job, "g")


def test_an_unbound_registry_serde_says_it_needs_a_topic():
    with pytest.raises(ConfigurationError, match="without a topic"):
        SchemaRegistry("http://registry.invalid:8081").avro().serialize({"a": 1})


def test_settings_come_from_parameters_before_the_environment():
    env = {"SCHEMA_REGISTRY_URL": "http://from-env:8081", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:p"}
    assert SchemaRegistry.from_params({}, env).url == "http://from-env:8081"
    registry = SchemaRegistry.from_params({"schema.registry.url": "http://from-params:8081", "input": "x"}, env)
    assert registry.url == "http://from-params:8081"
    assert registry.settings["basic.auth.user.info"] == "@env:SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", \
        "the secret is kept as a reference"
    with pytest.raises(ConfigurationError, match="no schema registry URL"):
        SchemaRegistry.from_params({}, {})


@pytest.mark.parametrize("name,value", [
    ("schema.registry.basic.auth.user.info", "user:secret"),
    ("schema.registry.bearer.auth.token", "t0ken"),
    ("schema.registry.url", "http://user:secret@registry:8081"),
])
def test_a_secret_given_as_a_job_parameter_is_refused(name, value):
    with pytest.raises(ConfigurationError, match="ps"):
        SchemaRegistry.from_params({"schema.registry.url": "http://registry:8081", name: value}, {})


def test_credentials_are_read_from_their_reference_when_the_client_is_made(monkeypatch, tmp_path):
    secret = tmp_path / "registry-auth"
    secret.write_text("eos:s3cret\n")
    registry = SchemaRegistry.from_params({"schema.registry.url": "http://registry:8081",
                                           "schema.registry.basic.auth.user.info": f"@file:{secret}",
                                           "schema.registry.timeout": "5"}, {})
    client = registry.client()
    assert client is registry.client(), "one client per registry"
    assert client._rest_client.auth == ("eos", "s3cret") and client._rest_client.timeout == 5


def test_protobuf_messages_become_plain_values_and_back():
    user_total = user_total_type()
    message = user_total(user="u", sum=2**40, count=3, last_id=7)
    value = protobuf_values.to_dict(message)
    assert value == {"user": "u", "sum": 2**40, "count": 3, "last_id": 7, "last_coupon": None}
    assert protobuf_values.from_value(user_total, value) == message
    assert protobuf_values.from_value(user_total, {**value, "last_coupon": "c"}).last_coupon == "c"
    with pytest.raises(ValueError, match="no \"bogus\" field"):
        protobuf_values.from_value(user_total, {"bogus": 1})

