"""A single-node KRaft broker of the devstack run from the Maven Central jars: the settings and
logging both devstack brokers share, its storage formatting, its start and its readiness probe."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

from streams.cli.processes import START_TIMEOUT_SECONDS, DevstackError, start_detached, wait_until

# A single-node broker and controller: its clients' listener, then what secures it, then storage.
_PROPERTIES: Final = """process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners={listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners={listener}://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:{controller_protocol},{listener}:{listener}
inter.broker.listener.name={listener}
{security}log.dirs={data}
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

LOG4J2: Final = """status = warn
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


def broker_properties(
    port: int,
    controller: int,
    data: Path,
    listener: str = "PLAINTEXT",
    controller_protocol: str = "PLAINTEXT",
    security: str = "",
) -> str:
    """The ``server.properties`` of a broker serving its clients on ``port`` over ``listener``
    (a security protocol), its controller on ``controller``, its logs in ``data``; ``security``
    holds the lines that set up authentication, TLS and authorisation."""
    return _PROPERTIES.format(
        port=port,
        controller=controller,
        data=data,
        listener=listener,
        controller_protocol=controller_protocol,
        security=security,
    )


def cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64. Like Kafka's own
    ``Uuid.randomUuid``, never one starting with ``-`` (a command line would read an option)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def java_tool(
    java: str, classpath: str, main_class: str, *args: str, what: str, tail: int | None = 1500
) -> None:
    """Run one of Kafka's command-line tools; fail with its output (the ``tail`` last characters
    of each stream, or all of it) when it fails."""
    result = subprocess.run(
        [java, "-cp", classpath, main_class, *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        out, err = (text[-tail:] if tail else text for text in (result.stdout, result.stderr))
        raise DevstackError(f"{what} failed:\n{out}{err}")


def format_storage(
    java: str, classpath: str, props: Path, *more: str, what: str, tail: int | None = 1500
) -> None:
    """Format the broker's storage (KRaft, standalone controller) with a fresh cluster id."""
    java_tool(
        java,
        classpath,
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        f"--cluster-id={cluster_id()}",
        "-c",
        str(props),
        *more,
        what=what,
        tail=tail,
    )


def start_broker(
    java: str,
    classpath: str,
    props: Path,
    log4j: Path,
    home: Path,
    answers: Callable[[], bool],
    what: str,
) -> None:
    """Start the broker configured in ``props`` detached, its console output in ``home/kafka.out``
    and its pid in ``home/kafka.pid``, and wait until it ``answers``."""
    pid = start_detached(
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
        home / "kafka.out",
        home / "kafka.pid",
    )
    logs = [home / "kafka.out", home / "kafka.log"]
    wait_until(answers, pid, START_TIMEOUT_SECONDS, what, logs)


def api_versions_ok(port: int, ca_file: Path | None = None) -> bool:
    """True when the broker answers an ApiVersions request (it is serving, not just listening);
    over TLS, trusting ``ca_file``, when given (ApiVersions is allowed before authentication)."""
    request = (
        (18).to_bytes(2, "big")  # api key: ApiVersions
        + (0).to_bytes(2, "big")  # version 0
        + (1).to_bytes(4, "big")  # correlation id
        + (9).to_bytes(2, "big")
        + b"devstack "
    )
    context = None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            if context is None:
                return _answer_ok(raw, request)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                return _answer_ok(sock, request)
    except OSError:  # ssl.SSLError among them
        return False


def _answer_ok(sock: socket.socket, request: bytes) -> bool:
    sock.sendall(len(request).to_bytes(4, "big") + request)
    header = sock.recv(4)
    if len(header) < 4:
        return False
    body = sock.recv(int.from_bytes(header, "big"))
    return len(body) >= 6 and int.from_bytes(body[4:6], "big") == 0
