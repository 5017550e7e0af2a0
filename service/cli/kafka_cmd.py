"""`eos kafka start|stop|status`: a local single-node broker for development and tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from service.local_kafka import BrokerSettings, LocalBroker


def _broker(port: int, data_dir: Path | None) -> LocalBroker:
    return LocalBroker(BrokerSettings(port=port, data_dir=data_dir))


_port = click.option("--port", default=9092, show_default=True, help="Client listener port.")
_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                         help="Broker data and logs (default: ~/.cache/eos/kafka-data/PORT).")


@click.group()
def kafka() -> None:
    """Run a real Apache Kafka broker (KRaft, single node) fetched from Maven Central."""


@kafka.command()
@_port
@_data_dir
def start(port: int, data_dir: Path | None) -> None:
    """Start the broker, or reuse the one already running, and print its bootstrap address."""
    broker = _broker(port, data_dir)
    began = time.monotonic()
    bootstrap = broker.start()
    click.echo(f"Kafka broker ready at {bootstrap} ({time.monotonic() - began:.1f}s); "
               f"log: {broker.log_file}", err=True)
    click.echo(bootstrap)


@kafka.command()
@_port
@_data_dir
def stop(port: int, data_dir: Path | None) -> None:
    """Stop the broker cleanly."""
    stopped = _broker(port, data_dir).stop()
    click.echo("stopped" if stopped else "not running")


@kafka.command()
@_port
@_data_dir
def status(port: int, data_dir: Path | None) -> None:
    """Print whether the broker runs, its pid, address and log file (JSON)."""
    info = _broker(port, data_dir).status()
    click.echo(json.dumps(info, indent=2))
    if not info["running"]:
        raise SystemExit(3)
