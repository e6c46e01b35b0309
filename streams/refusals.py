"""Kafka's refusals (wrong credentials, an untrusted certificate, missing ACLs) told in one line
that names the setting to fix and never a secret; retrying cannot cure them."""

from __future__ import annotations

import ssl

from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)

from config.settings import Settings
from streams.clients import kafka_options
from streams.framework.connection import connection_error

AUTHORIZATION_ERRORS = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


class KafkaRefused(RuntimeError):
    """Kafka refused the configured credentials or permissions: fix the settings, not retry."""


async def refusal(settings: Settings, exc: BaseException) -> KafkaRefused | None:
    """What ``exc`` (raised by a Kafka client) means if Kafka refused us; None if it is not a
    refusal (the broker is unreachable or busy: worth waiting for)."""
    cause: BaseException | None = exc
    if _unreachable(exc):
        cause = await connection_error(kafka_options(settings))
    message = describe_refusal(settings, cause) if cause is not None else None
    return KafkaRefused(message) if message else None


def describe_refusal(settings: Settings, exc: BaseException) -> str | None:
    """A one-line account of a refusal, naming the settings involved; None for other errors."""
    where = f"Kafka at {settings.kafka_bootstrap_servers}"
    user = f"SEGMENTER_KAFKA_SASL_USERNAME={settings.kafka_sasl_username}"
    who = user if settings.uses_sasl else "this client"
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        return (
            f"{where} refused the credentials of {user} (SASL {settings.kafka_sasl_mechanism}): "
            "check SEGMENTER_KAFKA_SASL_PASSWORD"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (
            f"{where} does not accept SASL {settings.kafka_sasl_mechanism}: "
            "check SEGMENTER_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"{where}: its TLS certificate was not accepted ({exc.verify_message}): check "
            "SEGMENTER_KAFKA_SSL_CAFILE (and SEGMENTER_KAFKA_SSL_CHECK_HOSTNAME)"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"{where}: the TLS handshake failed ({exc.reason or exc.__class__.__name__}): check "
            "SEGMENTER_KAFKA_SECURITY_PROTOCOL and SEGMENTER_KAFKA_SSL_* "
        ).rstrip()
    if isinstance(exc, AUTHORIZATION_ERRORS):
        kind = exc.__class__.__name__.removesuffix("Error").removesuffix("AuthorizationFailed")
        detail = f" ({exc.args[0]})" if exc.args and isinstance(exc.args[0], str) else ""
        return (
            f"{where} denied {who} access to a {kind.lower()} resource{detail}: grant its "
            "ACLs (docs/operations.md, Running against your Kafka)"
        )
    return None


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError) or isinstance(exc.__cause__, KafkaConnectionError)
