"""`eos demo`: the running-sum pipeline end to end on one machine (what `make run` runs).

Starts a local broker unless one is given, creates the demo topics, runs a worker of
examples/running_sum.py as a separate process with its status page and metrics on
`--http-port`, feeds it orders while showing progress (produced, committed outputs,
completed checkpoint), then prints some results.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import click
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from service.checkpointing.recovery import parse_metadata
from service.cli.generator import OrderGenerator
from service.cli.options import bootstrap_option
from service.local_kafka import BrokerSettings, LocalBroker
from service.runtime.topics import create_topics

REPO = Path(__file__).resolve().parents[2]


def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    create_topics(AdminClient({"bootstrap.servers": bootstrap}),
                  [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])


def _feed(bootstrap: str, topic: str, records: int, rate: float, users: int, bar: tqdm,
          stop: threading.Event) -> None:
    OrderGenerator(bootstrap, topic, rate=rate, users=users).run(records, stop, bar.update)


def _free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise click.ClickException("no free TCP port for the worker's status page")


class _OutputWatcher:
    """Counts committed outputs (read_committed) and reads the group's checkpoint id."""

    def __init__(self, bootstrap: str, output: str, group: str, input_topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"demo-watch-{uuid.uuid4().hex[:6]}",
                                  "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
        self.consumer.subscribe([output])
        self.offsets = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        self.input_topic = input_topic
        self.count = 0
        self.latest: dict[str, dict] = {}

    def poll(self) -> None:
        for msg in self.consumer.consume(5000, 0.2):
            if msg.error() is None:
                self.count += 1
                value = json.loads(msg.value())
                self.latest[value["user"]] = value

    def checkpoint_id(self) -> int:
        try:
            parts = self.offsets.list_topics(self.input_topic, timeout=5).topics[self.input_topic].partitions
            committed = self.offsets.committed([TopicPartition(self.input_topic, p) for p in parts], timeout=5)
        except Exception:  # noqa: BLE001 - progress display only
            return 0
        refs = [parse_metadata(c.metadata) for c in committed]
        return max([r.checkpoint_id for r in refs if r is not None], default=0)

    def close(self) -> None:
        self.consumer.close()
        self.offsets.close()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@click.command("demo")
@bootstrap_option(required=False, help_suffix=" Use this broker instead of starting a local one.")
@click.option("--port", default=9092, show_default=True, help="Port of the local broker to start.")
@click.option("--records", default=100_000, show_default=True)
@click.option("--rate", default=5_000.0, show_default=True, help="Orders per second.")
@click.option("--users", default=1_000, show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".eos/demo"), show_default=True)
@click.option("--keep-running/--stop-at-end", default=False, show_default=True,
              help="Leave the worker running after the input is processed (Ctrl-C stops it).")
@click.option("--http-port", default=8080, show_default=True,
              help="Port of the worker's status page and metrics (another free one if taken).")
def demo(bootstrap_servers: str | None, port: int, records: int, rate: float, users: int,
         workdir: Path, keep_running: bool, http_port: int) -> None:
    """Run the running-sum demo pipeline and show its progress."""
    if not bootstrap_servers:
        click.echo(f"starting a local Kafka broker on port {port} (first start fetches it from Maven Central)...")
        bootstrap_servers = LocalBroker(BrokerSettings(port=port)).start()
    run_id = uuid.uuid4().hex[:6]
    input_topic, output_topic, group = f"demo-orders-{run_id}", f"demo-totals-{run_id}", f"running-sum-demo-{run_id}"
    _create_topics(bootstrap_servers, [input_topic, output_topic], partitions=4)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"worker-{run_id}.log"
    http_port = _free_port(http_port)
    cmd = [sys.executable, "-m", "service.cli", "run", str(REPO / "examples" / "running_sum.py"),
           "--bootstrap-servers", bootstrap_servers, "--group", group,
           "--state-dir", str(workdir / "state"),
           "--checkpoint-storage", f"file://{(workdir / 'checkpoints').resolve()}",
           "--checkpoint-interval", "1s", "--worker-id", "demo-1",
           "--http-port", str(http_port),
           "-p", f"input={input_topic}", "-p", f"output={output_topic}"]
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    click.echo(f"\nbroker:        {bootstrap_servers}\n"
               f"topics:        {input_topic} -> {output_topic}\n"
               f"worker log:    {log_path}\n"
               f"checkpoints:   {workdir / 'checkpoints'}\n"
               f"status page:   http://127.0.0.1:{http_port}/\n"
               f"metrics:       http://127.0.0.1:{http_port}/metrics\n")
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: the worker gets a final checkpoint
    watcher = _OutputWatcher(bootstrap_servers, output_topic, group, input_topic)
    stop = threading.Event()
    produced = tqdm(total=records, desc="orders produced ", unit="rec", position=0)
    committed = tqdm(total=records, desc="outputs committed", unit="rec", position=1)
    feeder = threading.Thread(target=_feed, args=(bootstrap_servers, input_topic, records, rate, users,
                                                  produced, stop), daemon=True)
    feeder.start()
    try:
        last_check = 0.0
        while watcher.count < records:
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited with {worker.returncode}; see {log_path}")
            watcher.poll()
            committed.update(watcher.count - committed.n)
            if time.monotonic() - last_check > 1:
                last_check = time.monotonic()
                committed.set_postfix_str(f"checkpoint {watcher.checkpoint_id()}")
        produced.close()
        committed.close()
        click.echo("\nlatest running totals (user: sum / count):")
        for user in sorted(watcher.latest)[:10]:
            v = watcher.latest[user]
            click.echo(f"  {user:>10}: {v['sum']:>8} / {v['count']}")
        if keep_running:
            click.echo(f"\nthe worker keeps running (Ctrl-C stops it); status page http://127.0.0.1:{http_port}/")
            worker.wait()
        else:
            click.echo("\n(--keep-running, or `make run DEMO_ARGS=--keep-running`, keeps the worker and its "
                       "status page up)")
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        watcher.close()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(60)
            click.echo(f"worker stopped with a final checkpoint (exit {code})")
