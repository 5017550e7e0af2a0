"""Every runnable example in README.md and in examples/ runs exactly as documented.

A runnable example is a block of `eos` commands with nothing left out (no `...`): the
README's shell blocks, and the indented command blocks of the examples' docstrings. Each
runs as a user would run it: its lines in order, in a shell, in a fresh directory that
holds a copy of `examples/` (as the repository's root and the worker image do), with
KAFKA_BOOTSTRAP_SERVERS naming a broker of the test's own where the topics the commands
name exist (and POSTGRES_DSN a fresh database, for examples that write to PostgreSQL). `eos run` runs until every generated order has its output, then stops on
SIGTERM with exit code 0, and the independent oracle checks the output.
"""

from __future__ import annotations

import json
import os
from collections import Counter
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SCHEMA_REGISTRY_GROUP
from tests.harness.kafka import create_topics, read_all
from tests.harness.registry_clients import protobuf_totals
from tests.harness.oracle import Order, check_running_sum
from tests.harness.pg_table_oracle import check_tables
from tests.harness.timer_oracle import check_alerts, expected_alerts
from tests.harness.window_oracle import (
    Expected,
    TimedOrder,
    WindowRules,
    check_windows,
    expected_sessions,
    expected_sliding,
    expected_windows,
)
from tests.harness.worker_process import EOS, REPO, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

EOS_BIN_DIR = str(Path(EOS[0]).parent)


def _command_lines(block: str) -> list[str]:
    """Shell lines of a block, continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and
            not line.strip().startswith("#")]


def _readme_blocks() -> list[tuple[str, list[str]]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [("README.md", _command_lines(b)) for b in blocks]


def _docstring_blocks() -> list[tuple[str, list[str]]]:
    found = []
    for path in sorted((REPO / "examples").glob("*.py")):
        doc = (path.read_text().split('"""')[1:2] or [""])[0]
        for block in re.findall(r"((?:^    eos .*\n(?:^        .*\n)*)+)", doc, re.M):
            found.append((f"examples/{path.name}", _command_lines(block)))
    return found


def _runnable(blocks: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [(where, lines) for where, lines in blocks
            if any(line.startswith("eos run ") for line in lines) and not any("..." in line for line in lines)]


EXAMPLES = _runnable(_readme_blocks()) + _runnable(_docstring_blocks())


def _needs_registry(lines: list[str]) -> bool:
    """Examples of schema-registry serdes: their job file makes a SchemaRegistry."""
    run = shlex.split(next(line for line in lines if line.startswith("eos run ")))
    return "SchemaRegistry" in (REPO / run[2]).read_text()


def _example_params() -> list:
    """Examples that need the schema registry run in its test process (one registry)."""
    return [pytest.param(where, lines, id=f"{where}:{i}",
                         marks=[pytest.mark.xdist_group(SCHEMA_REGISTRY_GROUP)] if _needs_registry(lines) else [])
            for i, (where, lines) in enumerate(EXAMPLES)]


def test_the_readme_and_every_example_have_a_runnable_example():
    places = {where for where, _ in EXAMPLES}
    assert "README.md" in places and {f"examples/{p.name}" for p in (REPO / "examples").glob("*.py")} <= places


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _params(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-p")


@pytest.mark.parametrize("where,lines", _example_params())
def test_the_example_runs_as_documented(where, lines, private_broker, tmp_path, request):
    workdir = tmp_path / "work"
    shutil.copytree(REPO / "examples", workdir / "examples")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": private_broker.bootstrap,
           "PATH": f"{EOS_BIN_DIR}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    registry = {}
    if _needs_registry(lines):
        env["SCHEMA_REGISTRY_URL"] = request.getfixturevalue("schema_registry").url
        registry["registry_url"] = env["SCHEMA_REGISTRY_URL"]
    writes_postgres = any("POSTGRES_DSN" in line for line in lines)
    if writes_postgres:
        env["POSTGRES_DSN"] = request.getfixturevalue("postgres_db")
    commands = [line for line in lines if not line.startswith("export ")]
    run_line = next(line for line in commands if line.startswith("eos run "))
    run_argv = shlex.split(run_line)
    params = _params(run_argv)
    generated = [shlex.split(line) for line in commands if line.startswith("eos generate ")]
    create_topics(private_broker.bootstrap, sorted({params["input"], params["output"]}
                                                     | {_option(g, "--topic") for g in generated}), 4)
    for line in commands:
        if line is run_line:
            break
        done = subprocess.run(["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{where}: {line}\n{done.stdout}{done.stderr}"
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(["bash", "-c", f"exec {run_line}"], cwd=workdir, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    contracts = {"orders_per_minute.py": PerMinute, "user_sessions.py": Sessions, "inactivity_alert.py": Inactivity,
                 "order_enrichment.py": Enrichment, "users_per_country.py": UsersPerCountry,
                 "registry_totals.py": RegistryTotals, "moving_sum.py": MovingSums}
    job_file = shlex.split(run_line)[2].rsplit("/", 1)[-1]
    inputs = read_all(private_broker.bootstrap, params["input"], with_meta=True, with_timestamp=True)
    if writes_postgres:
        contract = PostgresContract(inputs, env["POSTGRES_DSN"])
    else:
        contract = contracts.get(job_file, RunningSumContract)(inputs, **registry)
    if hasattr(contract, "read_tables"):
        contract.read_tables({name: read_all(private_broker.bootstrap, topic, with_meta=True)
                              for name, topic in params.items() if name not in ("input", "output")})
    try:
        def done() -> bool:
            assert worker.poll() is None, f"{where}: {run_line}\n{log_path.read_text()}"
            return contract.complete(contract.outputs(private_broker.bootstrap, params["output"]))

        wait_for(done, 180, 1.0, f"the outputs of {where}")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
    problems = contract.check(contract.outputs(private_broker.bootstrap, params["output"]))
    assert not problems, f"{where}: {problems}"


class Contract:
    """What an example must give: complete once `wanted` outputs are there."""

    wanted = 0

    def complete(self, outputs: list) -> bool:
        return len(outputs) >= self.wanted


class RunningSumContract(Contract):
    """running_sum*.py: one output per order, checked by the running-sum oracle."""

    def __init__(self, inputs: list[tuple]) -> None:
        self.orders = {o.id: o for o in (_order(value) for _, _, _, value, _ in inputs)}
        assert self.orders, "the example produced no input"
        self.wanted = len(self.orders)

    def outputs(self, bootstrap: str, topic: str) -> list:
        return read_all(bootstrap, topic)

    def check(self, outputs: list) -> str | None:
        report = check_running_sum(self.orders, outputs)
        return None if report.ok else report.summary()


class PostgresContract(RunningSumContract):
    """running_sum_postgres.py: the running-sum oracle on the Kafka output, and the table
    oracle on what the final checkpoint left in PostgreSQL."""

    def __init__(self, inputs: list[tuple], dsn: str) -> None:
        super().__init__(inputs)
        self.dsn = dsn

    def check(self, outputs: list) -> str | None:
        report = check_tables(self.orders, self.dsn)
        return super().check(outputs) or (None if report.ok else report.summary())


class RegistryTotals(RunningSumContract):
    """registry_totals.py: Avro orders in, Protobuf totals out, both decoded by
    confluent-kafka's own deserializers; then the running-sum oracle."""

    def __init__(self, inputs: list[tuple], registry_url: str) -> None:
        self.registry_url = registry_url
        self.read_order = _avro_orders(registry_url)
        super().__init__([(p, o, k, self.read_order(v), ts) for p, o, k, v, ts in inputs])

    def outputs(self, bootstrap: str, topic: str) -> list:
        if not hasattr(self, "decode"):
            self.decode = protobuf_totals(self.registry_url, topic)
        return read_all(bootstrap, topic)

    def check(self, outputs: list) -> str | None:
        report = check_running_sum(self.orders, outputs, decode=self.decode)
        return None if report.ok else report.summary()


def _avro_orders(registry_url: str):
    """Avro orders as the JSON the running-sum contract reads."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    return lambda raw: json.dumps(deserializer(raw, None)).encode()


class Enrichment(RunningSumContract):
    """order_enrichment.py: every order once, with its user's country from the users
    topic (each user has one profile, produced before any order), or None."""

    def read_tables(self, tables: dict[str, list]) -> None:
        self.countries = {key.decode(): json.loads(value)["country"] for _, _, key, value in tables["users"]}
        assert self.countries, "the example produced no profile"

    def check(self, outputs: list) -> str | None:
        seen = {}
        for _, value in outputs:
            order = json.loads(value)
            if order["id"] in seen:
                return f"order {order['id']} appears twice"
            seen[order["id"]] = order["country"]
        wrong = [(i, c) for i, c in seen.items() if c != self.countries.get(self.orders[i].user)]
        if wrong or set(seen) != set(self.orders):
            return f"{len(wrong)} orders with the wrong country ({wrong[:5]}), {len(set(self.orders) - set(seen))} missing"
        if not any(c is None for c in seen.values()):
            return "no order of a user without a profile: the example should show the left join"
        return None


class UsersPerCountry(Contract):
    """users_per_country.py: the latest count of each country equals the number of
    users whose latest profile names it (a country left empty says 0)."""

    def __init__(self, inputs: list[tuple]) -> None:
        latest = {}
        for _, _, key, value, _ in sorted(inputs, key=lambda record: (record[0], record[1])):
            latest[key.decode()] = json.loads(value)["country"]
        assert latest, "the example produced no profile"
        self.expected = dict(Counter(latest.values()))

    def outputs(self, bootstrap: str, topic: str) -> list:
        return read_all(bootstrap, topic)

    def _counts(self, outputs: list) -> dict[str, int]:
        counts = {key.decode(): json.loads(value) for key, value in outputs}
        return {country: count for country, count in counts.items() if count}

    def complete(self, outputs: list) -> bool:
        return self._counts(outputs) == self.expected

    def check(self, outputs: list) -> str | None:
        counts = self._counts(outputs)
        return None if counts == self.expected else f"counts {counts}, expected {self.expected}"


class PerMinute(Contract):
    """orders_per_minute.py: one final result per user and minute that the input's
    watermark closed (its end plus 5 s of grace at or below the least, over the input
    partitions, of the largest event time), checked by the window oracle. The job hears
    of progress up to a second late, so a minute closing within that second may or may
    not be out yet."""

    GRACE_MS = 5_000
    SIZE_MS = 60_000  # the oracle's end of a window: its start plus this (sessions: their own)
    INCLUSIVE_END = False

    def __init__(self, inputs: list[tuple]) -> None:
        orders = _timed(inputs)
        progress = _progress(orders)
        expected = self.expected(orders)
        closing = {w: self.end(expected, w) + self.GRACE_MS for w in expected.windows}
        self.surely = Expected({w: v for w, v in expected.windows.items() if closing[w] <= progress - 1_000}, 0,
                               ends=expected.ends)
        self.maybe = {w for w in expected.windows if progress - 1_000 < closing[w] <= progress}
        self.wanted = len(self.surely.windows)

    def expected(self, orders: list[TimedOrder]) -> Expected:
        return expected_windows(orders, WindowRules(60_000, None, self.GRACE_MS, 0))

    def end(self, expected: Expected, window: tuple[str, int]) -> int:
        return window[1] + self.SIZE_MS

    def outputs(self, bootstrap: str, topic: str) -> list:
        return read_all(bootstrap, topic, with_timestamp=True)

    def check(self, outputs: list) -> str | None:
        sure = [o for o in outputs if (o[0].decode(), json.loads(o[1])["start"]) not in self.maybe]
        report = check_windows(self.surely, sure, "final", self.SIZE_MS, inclusive_end=self.INCLUSIVE_END)
        return None if report.ok and self.wanted > 0 else report.summary()


class Sessions(PerMinute):
    """user_sessions.py: one final result per session the input's watermark closed (its
    end plus 5 s of grace), checked by the session oracle, with the same second of doubt
    as orders_per_minute.py."""

    SIZE_MS = 0

    def expected(self, orders: list[TimedOrder]) -> Expected:
        return expected_sessions(orders, 30_000, self.GRACE_MS, 0)

    def end(self, expected: Expected, window: tuple[str, int]) -> int:
        return expected.ends[window]


class MovingSums(PerMinute):
    """moving_sum.py: one final result per sliding window the input's watermark closed
    (its inclusive end plus 5 s of grace), checked by the sliding-window oracle, with the
    same second of doubt as orders_per_minute.py."""

    INCLUSIVE_END = True

    def expected(self, orders: list[TimedOrder]) -> Expected:
        return expected_sliding(orders, 60_000, self.GRACE_MS, 0)


def _timed(inputs: list[tuple]) -> list[TimedOrder]:
    orders = [TimedOrder(o.id, o.user, o.amount, ts, partition)
              for partition, _, _, value, ts in inputs for o in [_order(value)]]
    assert orders, "the example produced no input"
    return orders


def _progress(orders: list[TimedOrder]) -> int:
    """The least, over the input's partitions, of the largest event time."""
    return min(max(o.ts for o in orders if o.partition == p) for p in {o.partition for o in orders})


class Inactivity(Contract):
    """inactivity_alert.py: the alerts the timer oracle finds, each exactly once."""

    SILENCE_MS = 30_000

    def __init__(self, inputs: list[tuple]) -> None:
        partitions: dict[int, list[tuple[str, int]]] = {}
        for partition, _, _, value, ts in inputs:
            partitions.setdefault(partition, []).append((_order(value).user, ts))
        self.expected = expected_alerts(partitions, self.SILENCE_MS)
        assert self.expected, "the example's input makes no alert"
        self.wanted = len(self.expected)

    def outputs(self, bootstrap: str, topic: str) -> list:
        return read_all(bootstrap, topic, with_timestamp=True)

    def check(self, outputs: list) -> str | None:
        return check_alerts(self.expected, outputs, self.SILENCE_MS)


def _order(raw: bytes) -> Order:
    value = json.loads(raw)
    return Order(value["id"], value["user"], value["amount"])
