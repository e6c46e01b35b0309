"""The secured devstack Kafka: a second single-node KRaft broker (same jars as the plain one)
whose clients connect over SASL_SSL with SCRAM, authorised by Kafka's StandardAuthorizer.

At its first start it makes a CA and a broker certificate (PEM, served as Kafka's PEM key and
trust stores), generates the passwords of an ``admin`` super user (controller and broker side)
and of a ``segmenter`` user, formats the storage with both as SCRAM users, and grants the
``segmenter`` user what the product needs (its topics and its consumer groups, see
:data:`PRODUCT_TOPICS`). ``client.env`` in its directory holds the ``SEGMENTER_KAFKA_*``
settings to connect as ``segmenter``; no password is ever printed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

from streams.cli.devstack import KAFKA_VERSION, Devstack
from streams.cli.kafka_broker import (
    LOG4J2,
    api_versions_ok,
    broker_properties,
    format_storage,
    java_tool,
    start_broker,
)
from streams.cli.processes import already_up, port_open, recorded_pid, stop_recorded
from streams.cli.tls_files import (
    CA_NAME,
    certificate_pem,
    make_ca,
    make_certificate,
    private_pem,
    write_private,
)

# A certificate of the secured Kafka is made once, at its first start, and kept.
CERTIFICATE_DAYS: Final = 3650

SECURE_KAFKA_PORT: Final = 19192
ADMIN_USER: Final = "admin"
CLIENT_USER: Final = "segmenter"
MECHANISM: Final = "SCRAM-SHA-512"
# Topic and group name prefixes of the product (app ids ``segmenter...``, their internal topics,
# the marketing topics ``customer.became_...``) and its default topics.
PRODUCT_PREFIXES: Final = ("segmenter", "customer.")
PRODUCT_TOPICS: Final = (
    "orders",
    "segment-transitions",
    "orders-dlq",
    "customer-consent",
    "customer-erasure",
    "customer-erasure-receipts",
)
TOPIC_OPERATIONS: Final = ("Create", "Describe", "DescribeConfigs", "Read", "Write", "Delete")
GROUP_OPERATIONS: Final = ("Read", "Describe", "Delete")

# What secures the broker: SCRAM over TLS for clients, PLAIN for the controller, ACLs.
_SECURITY_PROPERTIES: Final = """sasl.mechanism.inter.broker.protocol={mechanism}
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram_jaas}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram_jaas}
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain_jaas}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{admin}
allow.everyone.if.no.acl.found=false
"""


class SecureKafka:
    """Start, stop and inspect the secured devstack Kafka in ``<devstack dir>/secure``."""

    def __init__(self, devstack: Devstack, port: int = SECURE_KAFKA_PORT) -> None:
        self.devstack = devstack
        self.port = port
        self.controller_port = port + 1
        self.root = devstack.root / "secure"
        self.ca_file = self.root / "ca.pem"
        self.client_env = self.root / "client.env"
        self._pid_file = self.root / "kafka.pid"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_settings(self) -> dict[str, str]:
        """The ``SEGMENTER_*`` settings (without the prefix) to connect as the product's user."""
        lines = self.client_env.read_text().splitlines()
        pairs = (line.split("=", 1) for line in lines if "=" in line)
        return {k.removeprefix("SEGMENTER_").lower(): v for k, v in pairs}

    def up(self, say: Callable[[str], None] = print) -> None:
        logs = [self.root / "kafka.out", self.root / "kafka.log"]
        if already_up(self.answers, self.own_pid, "secured Kafka", logs):
            return
        self.devstack.fetch_kafka(say)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        passwords = self._passwords()
        self._certificates()
        props = self._write_config(passwords)
        data = self.root / "data"
        fresh = not (data / "meta.properties").exists()
        if fresh:
            self._format(props, passwords)
        say(f"starting secured Kafka {KAFKA_VERSION} (SASL_SSL) on {self.address} ...")
        log4j = self.root / "log4j2.properties"
        java, classpath = self.devstack.java(), self.devstack.classpath
        start_broker(java, classpath, props, log4j, self.root, self.answers, "secured Kafka")
        if fresh or not (self.root / "acls-granted").exists():
            self._grant(passwords)
        self._write_client_env(passwords)

    def down(self, say: Callable[[str], None] = print) -> None:
        stop_recorded(self._pid_file, b"kafka.Kafka", "secured kafka", say, 60, 0.2)

    def own_pid(self) -> int | None:
        return recorded_pid(self._pid_file, b"kafka.Kafka")

    def answers(self) -> bool:
        """True when the broker completes a TLS handshake and answers an ApiVersions request."""
        if not port_open(self.port) or not self.ca_file.exists():
            return False
        return api_versions_ok(self.port, self.ca_file)

    # -- first start ----------------------------------------------------------------------------

    def _passwords(self) -> dict[str, str]:
        """The users' passwords: generated once, kept (owner-only) while the data is kept."""
        path = self.root / "passwords.json"
        if path.exists() and (self.root / "data" / "meta.properties").exists():
            passwords: dict[str, str] = json.loads(path.read_text())
            return passwords
        passwords = {ADMIN_USER: secrets.token_hex(24), CLIENT_USER: secrets.token_hex(24)}
        write_private(path, json.dumps(passwords))
        return passwords

    def _certificates(self) -> None:
        keystore = self.root / "broker.pem"
        if self.ca_file.exists() and keystore.exists():
            return
        ca_key, ca = make_ca(CA_NAME, CERTIFICATE_DAYS)
        key, cert = make_certificate(
            ca_key, ca, "localhost", ["localhost"], ["127.0.0.1"], CERTIFICATE_DAYS
        )
        self.ca_file.write_bytes(certificate_pem(ca))
        write_private(keystore, private_pem(key) + certificate_pem(cert))

    def _write_config(self, passwords: dict[str, str]) -> Path:
        admin = passwords[ADMIN_USER]
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{admin}";'
        )
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{ADMIN_USER}" password="{admin}" user_{ADMIN_USER}="{admin}";'
        )
        props = self.root / "server.properties"
        write_private(
            props,
            broker_properties(
                self.port,
                self.controller_port,
                self.root / "data",
                "SASL_SSL",
                "SASL_PLAINTEXT",
                _SECURITY_PROPERTIES.format(
                    mechanism=MECHANISM,
                    scram_jaas=scram,
                    plain_jaas=plain,
                    keystore=self.root / "broker.pem",
                    ca=self.ca_file,
                    admin=ADMIN_USER,
                ),
            ),
        )
        write_private(
            self.root / "admin.properties",
            "security.protocol=SASL_SSL\n"
            f"sasl.mechanism={MECHANISM}\n"
            f"sasl.jaas.config={scram}\n"
            f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca_file}\n",
        )
        (self.root / "log4j2.properties").write_text(LOG4J2.format(log=self.root / "kafka.log"))
        return props

    def _format(self, props: Path, passwords: dict[str, str]) -> None:
        scram = [
            f"{mechanism}=[name={user},password={password}]"
            for user, password in passwords.items()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        ]
        format_storage(
            self.devstack.java(),
            self.devstack.classpath,
            props,
            *(arg for entry in scram for arg in ("--add-scram", entry)),
            what="formatting the secured Kafka's storage",
        )

    def _grant(self, passwords: dict[str, str]) -> None:
        """The product user's ACLs: its topics (prefixed and literal) and its groups."""
        principal = ("--allow-principal", f"User:{CLIENT_USER}")
        config = ("--bootstrap-server", self.address, "--command-config")
        config += (str(self.root / "admin.properties"),)
        topic_ops = [a for op in TOPIC_OPERATIONS for a in ("--operation", op)]
        group_ops = [a for op in GROUP_OPERATIONS for a in ("--operation", op)]
        prefixes = [a for p in PRODUCT_PREFIXES for a in ("--topic", p)]
        literal = [a for t in PRODUCT_TOPICS for a in ("--topic", t)]
        acl = "org.apache.kafka.tools.AclCommand"
        what = "granting the secured Kafka's ACLs"
        pattern = ("--resource-pattern-type", "prefixed")
        self._java_tool(
            acl, *config, "--add", *principal, *topic_ops, *prefixes, *pattern, what=what
        )
        self._java_tool(acl, *config, "--add", *principal, *topic_ops, *literal, what=what)
        groups = [a for p in PRODUCT_PREFIXES for a in ("--group", p)]
        self._java_tool(acl, *config, "--add", *principal, *group_ops, *groups, *pattern, what=what)
        (self.root / "acls-granted").touch()

    def _write_client_env(self, passwords: dict[str, str]) -> None:
        settings = {
            "KAFKA_BOOTSTRAP_SERVERS": self.address,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": CLIENT_USER,
            "KAFKA_SASL_PASSWORD": passwords[CLIENT_USER],
            "KAFKA_SSL_CAFILE": str(self.ca_file),
        }
        write_private(self.client_env, "".join(f"SEGMENTER_{k}={v}\n" for k, v in settings.items()))

    def _java_tool(self, main_class: str, *args: str, what: str) -> None:
        java_tool(self.devstack.java(), self.devstack.classpath, main_class, *args, what=what)
