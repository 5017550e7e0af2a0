"""The docker-compose stack, its Prometheus and its Grafana, checked without a Docker
engine: every command parses with the real CLI, ports, volumes and scrape targets
agree with each other, promtool accepts the Prometheus configuration, and the
dashboard asks only for metrics a worker exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from service.cli.generate_cmd import generate
from service.cli.run_cmd import run
from service.monitoring.metrics import WorkerMetrics
from tests.harness.prometheus import promtool_binary

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "eos.json"
PROMETHEUS_PORT = 9090  # Prometheus' default --web.listen-address
IMAGE_WORKDIR = "/app"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _parse(command: click.Command, args: list[str]) -> dict:
    """The options `args` give `command`, parsed by the real CLI (nothing runs)."""
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


@pytest.fixture(scope="module")
def workers(compose, tmp_path_factory) -> dict[str, dict]:
    """Each worker service's parsed `eos run` options, with the job path resolved as in
    the image (WORKDIR /app holds the repository's examples/)."""
    parsed = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] == ["run"]:
            job = command[1]
            assert not job.startswith("/"), f"{name}: job path {job} should be relative to {IMAGE_WORKDIR}"
            assert (REPO / job).is_file(), f"{name}: {job} is not in the image"
            args = [str(REPO / job), *command[2:]]
            parsed[name] = _parse(run, args)
    assert len(parsed) == 2, f"expected two workers, found {sorted(parsed)}"
    return parsed


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source (named volume or host path) of a service's volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def _container_ports(service: dict) -> dict[int, int]:
    """Container port -> published host port."""
    ports = {}
    for mapping in service.get("ports", []):
        host, container = str(mapping).rsplit(":", 1)
        ports[int(container)] = int(host.rsplit(":", 1)[-1])
    return ports


def test_docker_compose_accepts_the_file():
    try:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pytest.skip("no docker CLI: the compose file is checked by the other tests here only")
    if version.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin: the compose file is checked by the other tests here only")
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_workers_form_one_job_with_distinct_slots(workers):
    groups = {p["group"] for p in workers.values()}
    assert len(groups) == 1, groups
    assert sorted(p["worker_id"] for p in workers.values()) == sorted(workers), "worker id = service name"
    assert len({tuple(sorted(p["params"])) for p in workers.values()}) == 1


def test_workers_serve_http_on_all_interfaces_at_their_published_port(compose, workers):
    host_ports = []
    for name, options in workers.items():
        service = compose["services"][name]
        assert options["http_host"] == "0.0.0.0", f"{name} must listen beyond its container's loopback"
        published = _container_ports(service)
        assert options["http_port"] in published, f"{name}: port {options['http_port']} is not published"
        host_ports.append(published[options["http_port"]])
        probe = " ".join(service["healthcheck"]["test"])
        assert f":{options['http_port']}/healthz" in probe, f"{name}: health check misses the worker's port"
    assert len(set(host_ports)) == len(host_ports), "two workers publish the same host port"


def test_workers_share_the_checkpoint_volume_and_keep_their_state_apart(compose, workers):
    declared = set(compose.get("volumes") or {})
    checkpoint_sources, state_sources = set(), []
    for name, options in workers.items():
        mounts = _mounts(compose["services"][name])
        storage = options["checkpoint_storage"]
        assert storage.startswith("file:///"), storage
        checkpoint_dir = storage[len("file://"):]
        assert checkpoint_dir in mounts, f"{name}: {checkpoint_dir} is not a volume, so checkpoints die with it"
        checkpoint_sources.add(mounts[checkpoint_dir])
        state_dir = str(options["state_dir"])
        assert state_dir in mounts, f"{name}: --state-dir {state_dir} is not a volume"
        state_sources.append(mounts[state_dir])
    assert len(checkpoint_sources) == 1, f"workers must share one checkpoint volume: {checkpoint_sources}"
    assert len(set(state_sources)) == len(state_sources), f"state volumes must differ: {state_sources}"
    assert checkpoint_sources | set(state_sources) <= declared


def test_topics_generator_and_workers_agree(compose, workers):
    services = compose["services"]
    init_script = " ".join(services["topic-init"]["command"])
    created = set(re.findall(r"--topic\s+(\S+)", init_script))
    kafka_env = services["kafka"]["environment"]
    internal = re.search(r"PLAINTEXT://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"]).group(1)
    inputs = set()
    for name, options in workers.items():
        params = dict(p.split("=", 1) for p in options["params"])
        assert options["bootstrap_servers"] == internal, name
        assert {params["input"], params["output"]} <= created, f"{name} reads or writes a topic nobody creates"
        assert services[name]["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
        inputs.add(params["input"])
    generator = _parse(generate, services["generator"]["command"][1:])
    assert {generator["topic"]} == inputs and generator["bootstrap_servers"] == internal


def test_prometheus_scrapes_every_worker_at_its_metrics_port(compose, workers):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (scrape,) = config["scrape_configs"]
    assert scrape.get("metrics_path", "/metrics") == "/metrics"
    assert scrape["honor_labels"] is True, "without it Prometheus renames the workers' `job` label"
    targets = {t for static in scrape["static_configs"] for t in static["targets"]}
    assert targets == {f"{name}:{options['http_port']}" for name, options in workers.items()}
    service = compose["services"]["prometheus"]
    mounts = _mounts(service)
    assert mounts["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]
    assert PROMETHEUS_PORT in _container_ports(service)


def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run([promtool_binary(), "check", "config", str(PROMETHEUS_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana ------------------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                 "and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, keywords, labels removed)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group(0).lower() in _PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def _dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        found = re.fullmatch(r"\s*label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)\s*", text or "")
        assert found, f"template variable {variable['name']}: unexpected query {text!r}"
        queries.append(found.group(1))
    return queries


def test_grafana_dashboard_queries_only_metrics_the_workers_export():
    queries = _dashboard_queries(json.loads(DASHBOARD.read_text()))
    used = set().union(*(promql_metric_names(q) for q in queries))
    exported = WorkerMetrics("job", "worker").exported_names()
    assert used <= exported, f"the dashboard asks for metrics no worker exports: {sorted(used - exported)}"
    # throughput, lag, checkpoint duration and size, restarts
    assert {"eos_records_in_total", "eos_records_out_total", "eos_consumer_lag",
            "eos_checkpoint_duration_seconds_bucket", "eos_checkpoint_last_size_bytes",
            "eos_restarts_total"} <= used


def test_grafana_dashboard_queries_are_valid_promql(tmp_path):
    queries = _dashboard_queries(json.loads(DASHBOARD.read_text()))
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"eos:dashboard_query_{i}", "expr": q.replace("$job", ".*")} for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool_binary(), "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_metric_name_reader_sees_through_functions_labels_and_ranges():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(eos_checkpoint_duration_seconds_bucket{job=~"$job"}[5m])))'
            ' / on(worker) group_left eos_tasks offset 5m')
    assert promql_metric_names(expr) == {"eos_checkpoint_duration_seconds_bucket", "eos_tasks"}


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(compose):
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == f"http://prometheus:{PROMETHEUS_PORT}"
    dashboard = json.loads(DASHBOARD.read_text())
    used_sources = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert used_sources == {source["uid"]}
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "eos.yml").read_text())
    mounts = _mounts(compose["services"]["grafana"])
    (provider,) = providers["providers"]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_the_worker_image_runs_eos_with_the_examples_in_its_workdir(workers):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert re.search(rf"^WORKDIR {IMAGE_WORKDIR}$", dockerfile, re.M)
    assert re.search(r"^COPY examples \./examples$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["eos"\]$', dockerfile, re.M)
    exposed = {int(port) for port in re.findall(r"^EXPOSE (\d+)$", dockerfile, re.M)}
    assert {options["http_port"] for options in workers.values()} <= exposed


def test_workers_write_to_the_postgres_service_as_its_owner(compose, workers):
    """Every worker's database is the postgres service's: host, port, database and user
    as the service creates them, the password from PGPASSWORD (never on the command
    line), started once the server is healthy."""
    from psycopg.conninfo import conninfo_to_dict

    services = compose["services"]
    postgres = services["postgres"]
    env = postgres["environment"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert ("/var/lib/postgresql/data" in _mounts(postgres)) == ("/var/lib/kafka/data" in _mounts(services["kafka"])), \
        "the tables and the Kafka offsets they follow must outlive `docker compose down` together, or neither"
    for name, options in workers.items():
        params = dict(p.split("=", 1) for p in options["params"])
        target = conninfo_to_dict(params["postgres"])
        assert target["host"] == "postgres" and int(target.get("port", 5432)) == 5432, f"{name}: {target}"
        assert target["dbname"] == env["POSTGRES_DB"] and target["user"] == env["POSTGRES_USER"], name
        assert "password" not in target, f"{name}: a password on the command line is visible to every user"
        assert services[name]["environment"]["PGPASSWORD"] == env["POSTGRES_PASSWORD"], name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_the_postgres_service_can_prepare_a_transaction_per_writing_task(compose, workers):
    """Exactly-once prepares one transaction per task and table at each checkpoint:
    the server's max_prepared_transactions must cover the job's tasks (as many as the
    input topic's partitions) times its PostgreSQL sinks."""
    from service.job.loader import load_job
    from service.job.planner import plan

    services = compose["services"]
    command = " ".join(services["postgres"]["command"])
    allowed = int(re.search(r"max_prepared_transactions=(\d+)", command).group(1))
    init_script = " ".join(services["topic-init"]["command"])
    for name, options in workers.items():
        params = dict(p.split("=", 1) for p in options["params"])
        partitions = int(re.search(rf"--topic {params['input']} --partitions (\d+)", init_script).group(1))
        job = load_job(options["job_file"], params)
        sinks = plan(job, options["group"] or job.name).transactional_sinks()
        assert sinks, f"{name}: the demo job writes nothing to PostgreSQL"
        assert allowed >= partitions * len(sinks), f"{name}: {allowed} < {partitions} tasks x {len(sinks)} sinks"


def test_the_worker_image_has_the_postgres_client():
    """The image installs the lock; the lock pins psycopg with its C build."""
    lock = (REPO / "deploy" / "requirements.lock").read_text()
    assert re.search(r"^psycopg==", lock, re.M) and re.search(r"^psycopg-binary==", lock, re.M)
def test_savepoints_can_be_taken_from_the_host(compose, workers, tmp_path):
    """The settings that let `eos savepoint stop running-sum` from the host reach the
    workers (tests/test_remote_savepoints.py runs the same topology on real hosts)."""
    import ipaddress

    services = compose["services"]
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    token_service = services["control-token"]
    token_dir_source, token_dir = token_service["volumes"][0].split(":")[:2]
    for name, options in workers.items():
        service = services[name]
        assert options["token_flag"] is None, f"{name}: no token on the command line (ps shows it)"
        token_file = service["environment"]["EOS_CONTROL_TOKEN_FILE"]
        mounts = _mounts(service)
        mounted = [target for target, source in mounts.items() if source == token_dir_source]
        assert mounted and token_file.startswith(mounted[0] + "/"), f"{name}: the token file is not mounted"
        assert service["depends_on"]["control-token"]["condition"] == "service_completed_successfully"
        allowed = [ipaddress.ip_network(n) for n in options["control_allow"]]
        assert any(subnet.subnet_of(n) for n in allowed), f"{name}: calls from the host's gateway are refused"
        checkpoint_dir = options["checkpoint_storage"][len("file://"):]
        assert options["savepoint_dir"].startswith(f"file://{checkpoint_dir}/"), "savepoints off the shared volume"
        published = _container_ports(service)[options["http_port"]]
        assert options["http_advertised_urls"] == (f"http://{name}:{options['http_port']}",
                                                   f"http://localhost:{published}")
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), "control ports open to the LAN"
    script = token_service["command"][0].replace('"/secrets/', f'"{tmp_path}/')
    subprocess.run(["python3", "-c", script], check=True, timeout=30)
    token = (tmp_path / "control-token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    subprocess.run(["python3", "-c", script], check=True, timeout=30)
    assert (tmp_path / "control-token").read_text().strip() == token, "a restart must keep the token"
    assert token_dir_source == "./deploy/secrets" and token_dir == "/secrets"
