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

import datetime
import ipaddress
import json
import secrets
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from streams.cli.devstack import _LOG4J2, KAFKA_VERSION, START_TIMEOUT_SECONDS, Devstack, cluster_id
from streams.cli.processes import (
    DevstackError,
    pid_alive,
    port_open,
    reap,
    signal_group,
    wait_until,
)

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

_SERVER_PROPERTIES: Final = """process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=SASL_SSL
sasl.mechanism.inter.broker.protocol={mechanism}
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
        if self.answers():
            return
        logs = [self.root / "kafka.out", self.root / "kafka.log"]
        starting = self.own_pid()
        if starting is not None:
            wait_until(self.answers, starting, START_TIMEOUT_SECONDS, "secured Kafka", logs)
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
        with (self.root / "kafka.out").open("ab") as out:
            proc = subprocess.Popen(
                [
                    self.devstack.java(),
                    "-Xms256m",
                    "-Xmx1g",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
                    "-cp",
                    self.devstack.classpath,
                    "kafka.Kafka",
                    str(props),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file.write_text(str(proc.pid))
        wait_until(self.answers, proc.pid, START_TIMEOUT_SECONDS, "secured Kafka", logs)
        if fresh or not (self.root / "acls-granted").exists():
            self._grant(passwords)
        self._write_client_env(passwords)

    def down(self, say: Callable[[str], None] = print) -> None:
        pid = self.own_pid()
        if pid is not None:
            say(f"stopping secured kafka (pid {pid}) ...")
            signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while pid_alive(pid) and time.monotonic() < deadline:
                reap(pid)
                time.sleep(0.2)
            if pid_alive(pid):
                signal_group(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)

    def own_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"kafka.Kafka" in cmdline and pid_alive(pid) else None

    def answers(self) -> bool:
        """True when the broker completes a TLS handshake and answers an ApiVersions request."""
        if not port_open(self.port) or not self.ca_file.exists():
            return False
        return _api_versions_over_tls(self.port, self.ca_file)

    # -- first start ----------------------------------------------------------------------------

    def _passwords(self) -> dict[str, str]:
        """The users' passwords: generated once, kept (owner-only) while the data is kept."""
        path = self.root / "passwords.json"
        if path.exists() and (self.root / "data" / "meta.properties").exists():
            passwords: dict[str, str] = json.loads(path.read_text())
            return passwords
        passwords = {ADMIN_USER: secrets.token_hex(24), CLIENT_USER: secrets.token_hex(24)}
        _write_private(path, json.dumps(passwords))
        return passwords

    def _certificates(self) -> None:
        keystore = self.root / "broker.pem"
        if self.ca_file.exists() and keystore.exists():
            return
        ca_key, ca_cert = make_ca("segmenter devstack CA")
        key, cert = make_certificate(ca_key, ca_cert, "localhost", ["localhost"], ["127.0.0.1"])
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_private(keystore, (private_pem(key) + certificate_pem(cert)).decode())

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
        _write_private(
            props,
            _SERVER_PROPERTIES.format(
                port=self.port,
                controller=self.controller_port,
                mechanism=MECHANISM,
                scram_jaas=scram,
                plain_jaas=plain,
                keystore=self.root / "broker.pem",
                ca=self.ca_file,
                admin=ADMIN_USER,
                data=self.root / "data",
            ),
        )
        _write_private(
            self.root / "admin.properties",
            "security.protocol=SASL_SSL\n"
            f"sasl.mechanism={MECHANISM}\n"
            f"sasl.jaas.config={scram}\n"
            f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca_file}\n",
        )
        (self.root / "log4j2.properties").write_text(_LOG4J2.format(log=self.root / "kafka.log"))
        return props

    def _format(self, props: Path, passwords: dict[str, str]) -> None:
        scram = [
            f"{mechanism}=[name={user},password={password}]"
            for user, password in passwords.items()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        ]
        self._java_tool(
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            f"--cluster-id={cluster_id()}",
            "-c",
            str(props),
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
        _write_private(
            self.client_env, "".join(f"SEGMENTER_{k}={v}\n" for k, v in settings.items())
        )

    def _java_tool(self, main_class: str, *args: str, what: str) -> None:
        result = subprocess.run(
            [self.devstack.java(), "-cp", self.devstack.classpath, main_class, *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DevstackError(f"{what} failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}")


def make_ca(name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed CA certificate and its key (valid for ten years)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_certificate(
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    dns: list[str],
    ips: list[str],
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A certificate for ``name`` (and the given DNS names and IPs) signed by the CA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alternative: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alternative += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        _builder(subject, ca_cert.subject, key)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (what Kafka's PEM key store reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
    )


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds a key or a password)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _api_versions_over_tls(port: int, ca_file: Path) -> bool:
    request = (
        (18).to_bytes(2, "big")  # api key: ApiVersions (allowed before authentication)
        + (0).to_bytes(2, "big")
        + (1).to_bytes(4, "big")
        + (9).to_bytes(2, "big")
        + b"devstack "
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(len(request).to_bytes(4, "big") + request)
            header = sock.recv(4)
            if len(header) < 4:
                return False
            body = sock.recv(int.from_bytes(header, "big"))
            return len(body) >= 6 and int.from_bytes(body[4:6], "big") == 0
    except (OSError, ssl.SSLError):
        return False
