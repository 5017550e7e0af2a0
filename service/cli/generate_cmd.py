"""`eos generate`: running-sum orders (or user profiles) at a steady rate, for demos,
examples and load."""

from __future__ import annotations

import logging
import signal
import threading

import click

from service.cli.generator import ORDER_AVRO_SCHEMA, OrderGenerator, ProfileGenerator
from service.cli.options import DURATION, bootstrap_option

log = logging.getLogger(__name__)


@click.command("generate")
@bootstrap_option()
@click.option("--topic", required=True, help="Topic to produce the orders to.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="Orders per second.")
@click.option("--records", type=click.IntRange(min=0), default=0, show_default=True,
              help="How many orders to produce; 0 runs until SIGTERM/SIGINT.")
@click.option("--users", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Distinct users the orders belong to.")
@click.option("--start-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="Id of the first order.")
@click.option("--seed", type=int, default=None, help="Random seed (repeatable runs).")
@click.option("--key-by-user", is_flag=True, help="Key each order by its user (so Kafka partitions them by "
              "user), not by its id.")
@click.option("--event-time-step", type=DURATION, default=None,
              help="Give order i the event time (start of the current hour) + i * STEP, as its Kafka "
              "timestamp and in a \"ts\" field (event time for windows that does not depend on when the "
              "orders are produced); default: the time each is produced.")
@click.option("--event-time-step-ms", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--profiles", is_flag=True,
              help="Produce user profiles {\"user\", \"country\"} keyed by user instead of orders: one per "
                   "user (default --records: --users), then changes of random users' countries.")
@click.option("--format", "value_format", type=click.Choice(["json", "avro"]), default="json", show_default=True,
              help="Orders as JSON, or as Avro through the schema registry at SCHEMA_REGISTRY_URL (credentials "
                   "from SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO), registered under the subject TOPIC-value.")
def generate(bootstrap_servers: str, topic: str, rate: float, records: int, users: int, start_id: int,
             seed: int | None, key_by_user: bool, event_time_step: float | None, event_time_step_ms: int | None,
             profiles: bool, value_format: str) -> None:
    """Produce running-sum orders {"id", "user", "amount"} (or user profiles) to TOPIC."""
    if event_time_step is not None:
        event_time_step_ms = max(1, round(event_time_step * 1000))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if profiles:
        generator = ProfileGenerator(bootstrap_servers, topic, rate=rate, users=users, seed=seed)
        produced = generator.run(records or users, stop)
        click.echo(f"produced {produced} profiles of {users} users to {topic}")
        return
    extra = {}
    if value_format == "avro":
        from connectors.registry import SchemaRegistry
        from connectors.serdes import VALUE_FIELD

        if event_time_step_ms is not None:
            raise click.UsageError("--event-time-step adds a \"ts\" field that the orders' Avro schema lacks")
        serde = SchemaRegistry.from_params().avro(ORDER_AVRO_SCHEMA)
        extra["encode"] = serde.bound(topic, VALUE_FIELD, writes=True).serialize
    generator = OrderGenerator(bootstrap_servers, topic, rate=rate, users=users, start_id=start_id, seed=seed,
                               key_by_user=key_by_user, event_time_step_ms=event_time_step_ms, **extra)
    log.info("producing %s orders to %s at %.0f/s", records or "unbounded", topic, rate)
    produced = generator.run(records or None, stop)
    click.echo(f"produced {produced} orders to {topic} (ids {start_id}..{start_id + produced - 1})")
