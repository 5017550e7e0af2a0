"""Fetches an Apache Kafka broker's jars from Maven Central with Maven.

There is no Docker engine on our machines and no Kafka tarball mirror, but Maven
Central carries the broker as a library. A throw-away pom with one dependency gives
the whole runtime classpath; the result is cached per version outside the repository,
so a second start never touches the network.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eos.errors import LocalKafkaError

log = logging.getLogger(__name__)

# Newest 4.x release that resolves with all its runtime dependencies on Maven Central
# (checked 2026-11-25). Override with EOS_KAFKA_VERSION to try another.
DEFAULT_KAFKA_VERSION = "4.4.0"
SCALA_BINARY = "2.13"
# Kafka 4 logs through SLF4J 2; the broker artifact brings no binding, so we add log4j2.
LOG4J_VERSION = "2.26.1"
SLF4J_VERSION = "2.0.17"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>eos.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{scala}</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def cache_root() -> Path:
    """Where fetched jars and broker data live by default: the user's cache, not the repo."""
    if os.environ.get("EOS_CACHE_DIR"):
        return Path(os.environ["EOS_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "eos"


def kafka_version() -> str:
    return os.environ.get("EOS_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)


@dataclass(frozen=True)
class KafkaDistribution:
    """A resolved broker classpath: every jar the broker needs, in one directory."""

    version: str
    libs_dir: Path

    @property
    def classpath(self) -> str:
        return str(self.libs_dir / "*")


def require_java() -> str:
    """Path of the `java` launcher, or an error that says how to get one."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise LocalKafkaError(
            "no Java runtime found: the local Kafka broker needs Java 17 or newer. "
            "Install a JDK (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
        )
    return found


def ensure_distribution(version: str | None = None, cache: Path | None = None) -> KafkaDistribution:
    """Returns the cached classpath for `version`, resolving it with Maven on first use."""
    version = version or kafka_version()
    target = (cache or cache_root()) / "kafka" / version
    libs = target / "libs"
    marker = target / "complete"
    if marker.exists() and any(libs.glob(f"kafka_{SCALA_BINARY}-{version}.jar")):
        return KafkaDistribution(version, libs)
    mvn = shutil.which("mvn")
    if not mvn:
        raise LocalKafkaError(
            "Maven (`mvn`) is not installed: it is needed once to fetch the Kafka broker's jars "
            f"from Maven Central into {target}. Install Maven or set KAFKA_BOOTSTRAP_SERVERS "
            "to use a broker you already run."
        )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eos-kafka-pom-") as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(
            _POM.format(scala=SCALA_BINARY, kafka=version, slf4j=SLF4J_VERSION, log4j=LOG4J_VERSION)
        )
        staging = Path(work) / "libs"
        cmd = [
            mvn, "-q", "-B", "-f", str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        log.info("fetching Apache Kafka %s jars from Maven Central into %s", version, libs)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise LocalKafkaError(
                f"Maven could not fetch org.apache.kafka:kafka_{SCALA_BINARY}:{version} "
                f"(is Maven Central reachable?). Maven said:\n{tail}"
            )
        if libs.exists():
            shutil.rmtree(libs)
        shutil.move(str(staging), str(libs))
    marker.write_text(version + "\n")
    return KafkaDistribution(version, libs)
