"""How eos is installed: optional extras stay optional, the worker image installs pinned
dependencies in a layer of their own, and Kafka's data outlives its container."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "deploy" / "requirements.lock"


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"{LOCK.name}: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def test_s3_support_is_an_extra_that_file_storage_users_do_not_need():
    assert not any(r.name == "boto3" for r in _requirements()), "boto3 must not be a core dependency"
    assert any(r.name == "boto3" for r in _requirements("s3"))
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    own = next(r for r in _requirements("test") if r.name == "eos")
    assert own.extras == extras - {"test", "bench"}, "the tests need every extra"


_WITHOUT_EXTRA = {
    # extra: (the module it brings, code that needs it, what the error must name)
    "s3": ("boto3", """
from statestore.storage import open_storage
open_storage("file://{tmp}").put_atomic("x", b"1")  # file storage needs nothing more
open_storage("s3://bucket/prefix")""", "boto3"),
    "schema-registry": ("confluent_kafka.schema_registry", """
from eos import SchemaRegistry
SchemaRegistry("http://registry:8081").avro()""", "confluent_kafka.schema_registry"),
    "postgres": ("psycopg", """
from eos import PostgresSink""", "psycopg"),
}


@pytest.mark.parametrize("extra", sorted(_WITHOUT_EXTRA))
def test_without_an_extra_what_needs_it_says_which_extra_to_install(tmp_path, extra):
    module, code, names = _WITHOUT_EXTRA[extra]
    script = f"""
import sys
sys.modules["{module}"] = None  # as if the extra were not installed
try:
{textwrap.indent(code.format(tmp=tmp_path).strip(), "    ")}
except Exception as exc:
    print(exc)
else:
    raise SystemExit("no error")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"pip install 'eos[{extra}]'" in result.stdout and names in result.stdout, result.stdout

def test_the_lock_pins_every_dependency_the_image_installs_within_pyprojects_ranges():
    pins = _pins()
    for requirement in _requirements("s3", "schema-registry", "postgres"):
        name = requirement.name.lower()
        assert name in pins, f"{name} is a dependency but {LOCK.name} does not pin it"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{LOCK.name} pins {name}=={pins[name]}, outside pyproject.toml's {requirement.specifier}"


def test_the_image_installs_the_locked_dependencies_before_it_copies_the_code():
    steps = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    lock_install = next(i for i, s in enumerate(steps) if s.startswith("RUN") and "requirements.lock" in s)
    first_code = next(i for i, s in enumerate(steps) if s.startswith("COPY") and ("service" in s or "pyproject" in s))
    assert lock_install < first_code, "dependencies must be a layer of their own, before the code"
    assert "--no-deps" in steps[lock_install]
    project_install = next(s for s in steps[first_code:] if s.startswith("RUN pip install"))
    assert "--no-deps" in project_install, "the project must not pull unpinned dependencies"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "!deploy/requirements.lock" in ignored, "the build context must carry the lock file"


def test_kafka_keeps_its_data_on_a_volume():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    kafka = compose["services"]["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert log_dir in mounts, f"Kafka's log dir {log_dir} is not on a volume"
    assert mounts[log_dir] in compose["volumes"]
