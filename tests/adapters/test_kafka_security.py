"""The Kafka security settings reach every client (aiokafka's and Faust's arguments are built in
one place), and Kafka's refusals are told in one line that names the setting, not the secret."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from config.settings import Settings
from streams.cli.secure_kafka import certificate_pem, make_ca, make_certificate, private_pem
from streams.clients import faust_broker_options, kafka_options
from streams.refusals import describe_refusal

PASSWORD = "s3cret-kafka-password"


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca = make_ca("test CA")
    key, cert = make_certificate(ca_key, ca, "client", ["client"], [])
    files = {"ca": root / "ca.pem", "cert": root / "client.pem", "key": root / "client-key.pem"}
    files["ca"].write_bytes(certificate_pem(ca))
    files["cert"].write_bytes(certificate_pem(cert))
    files["key"].write_bytes(private_pem(key))
    return files


def sasl_ssl(pem_files: dict[str, Path], **more: object) -> Settings:
    return Settings(
        kafka_bootstrap_servers="b1:9096,b2:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="segmenter",
        kafka_sasl_password=PASSWORD,  # type: ignore[arg-type]
        kafka_ssl_cafile=pem_files["ca"],
        **more,  # type: ignore[arg-type]
    )


def test_plaintext_clients_get_the_servers_only() -> None:
    assert kafka_options(Settings()) == {
        "bootstrap_servers": "127.0.0.1:19092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_broker_options(Settings()) == {
        "broker": "kafka://127.0.0.1:19092",
        "broker_credentials": None,
    }


def test_sasl_ssl_clients_log_in_over_tls_trusting_the_ca(pem_files: dict[str, Path]) -> None:
    options = kafka_options(sasl_ssl(pem_files))
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "b1:9096,b2:9096",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "segmenter",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]


def test_faust_gets_the_same_credentials(pem_files: dict[str, Path]) -> None:
    options = faust_broker_options(sasl_ssl(pem_files))
    credentials = options["broker_credentials"]
    assert options["broker"] == "kafka://b1:9096;kafka://b2:9096"
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    assert (credentials.username, credentials.password) == ("segmenter", PASSWORD)
    assert credentials.ssl_context is not None


def test_mutual_tls_presents_the_client_certificate(pem_files: dict[str, Path]) -> None:
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pem_files["ca"],
        kafka_ssl_certfile=pem_files["cert"],
        kafka_ssl_keyfile=pem_files["key"],
        kafka_ssl_check_hostname=False,
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert options["ssl_context"].check_hostname is False
    credentials = faust_broker_options(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL"


def test_refused_credentials_name_the_user_and_the_password_setting(
    pem_files: dict[str, Path],
) -> None:
    message = describe_refusal(sasl_ssl(pem_files), SaslAuthenticationFailed("invalid"))
    assert message == (
        "Kafka at b1:9096,b2:9096 refused the credentials of "
        "SEGMENTER_KAFKA_SASL_USERNAME=segmenter (SASL SCRAM-SHA-512): "
        "check SEGMENTER_KAFKA_SASL_PASSWORD"
    )


def test_missing_acls_name_the_resource(pem_files: dict[str, Path]) -> None:
    settings = sasl_ssl(pem_files)
    topic = describe_refusal(settings, TopicAuthorizationFailedError("topic shop.orders"))
    group = describe_refusal(settings, GroupAuthorizationFailedError())
    assert topic is not None and group is not None
    assert topic.startswith(
        "Kafka at b1:9096,b2:9096 denied SEGMENTER_KAFKA_SASL_USERNAME=segmenter access to a "
        "topic resource (topic shop.orders): grant its ACLs"
    )
    assert "access to a group resource" in group
    assert PASSWORD not in topic + group


def test_an_untrusted_certificate_names_the_ca_setting(pem_files: dict[str, Path]) -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    message = describe_refusal(sasl_ssl(pem_files), error)
    assert message is not None
    assert "unable to get local issuer certificate" in message
    assert "SEGMENTER_KAFKA_SSL_CAFILE" in message


def test_other_errors_are_not_refusals(pem_files: dict[str, Path]) -> None:
    assert describe_refusal(sasl_ssl(pem_files), TimeoutError()) is None
