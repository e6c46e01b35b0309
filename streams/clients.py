"""Kafka clients: their connection and security options from the settings (the one place that
turns the ``SEGMENTER_KAFKA_*`` settings into aiokafka's and Faust's arguments), and started so
that a failed start leaves nothing open."""

from __future__ import annotations

import ssl
from typing import Any, TypeVar

import faust
from aiokafka.helpers import create_ssl_context

from config.settings import Settings

C = TypeVar("C")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every Kafka connection (None: the protocol uses no TLS)."""
    if not settings.uses_tls:
        return None
    context = create_ssl_context(
        cafile=_path(settings.kafka_ssl_cafile),
        certfile=_path(settings.kafka_ssl_certfile),
        keyfile=_path(settings.kafka_ssl_keyfile),
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every aiokafka client (consumer, producer, admin): the bootstrap
    servers, the security protocol, SASL and TLS."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.uses_sasl:
        assert settings.kafka_sasl_password is not None  # checked by the settings
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``faust.App`` for the broker: its URLs and credentials."""
    context = ssl_context(settings)
    credentials: Any = None
    if settings.uses_sasl:
        assert settings.kafka_sasl_password is not None  # checked by the settings
        credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return {
        "broker": broker_urls(settings.kafka_bootstrap_servers),
        "broker_credentials": credentials,
    }


def broker_urls(bootstrap_servers: str) -> str:
    """Faust's broker URLs (``kafka://``: the aiokafka driver; security is in the credentials)."""
    return ";".join(f"kafka://{s.strip()}" for s in bootstrap_servers.split(",") if s.strip())


def _path(path: object) -> str | None:
    return None if path is None else str(path)


async def started(client: C) -> C:
    """``client`` (an aiokafka consumer, producer or admin client), started; closed again when
    it cannot start (the broker is unreachable), so that no connection or task of it is left
    behind and aiokafka does not warn of a client never closed."""
    started_client: Any = client
    try:
        await started_client.start()
    except BaseException:
        close = getattr(started_client, "stop", None) or started_client.close
        await close()
        raise
    return client
