"""The settings model: every knob, read from environment variables prefixed ``SEGMENTER_``.

Defaults point at the local devstack (``segmenter devstack up``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVSTACK_KAFKA_PORT = 19092
DEVSTACK_REDIS_PORT = 16379
ENV_PREFIX = "SEGMENTER_"
# A shorter secret could be guessed, and pseudonyms reversed by trying customer ids.
MIN_SECRET_BYTES = 16
MASK = "***"


class RedisUrl(SecretStr):
    """A Redis URL kept as a secret: ``get_secret_value()`` is the URL to connect with; wherever
    it is shown (``repr``, ``str``, f-strings, logs) it is the URL with its password as ``***``,
    and JSON shows only stars. Not a ``str``: an operation that would copy the password out
    (concatenation, ``json.dumps``, slicing) fails instead of leaking it."""

    def _display(self) -> str:
        return masked_url(self.get_secret_value())


def masked_url(url: str) -> str:
    """``url`` with the password of its user part and of a ``password=`` query as ``***``
    (a user part is everything between ``://`` and the last ``@``, whatever it holds)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return MASK
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        rest = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    rest = re.sub(r"(?i)([?&]password=)[^&]*", rf"\g<1>{MASK}", rest)
    return f"{scheme}://{rest}"


def _secret_long_enough(value: SecretStr | None, variable: str) -> SecretStr | None:
    if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
        raise PydanticCustomError(
            "secret_too_short",
            "{variable} must be at least {minimum} bytes (unset it to turn this off)",
            {"variable": variable, "minimum": MIN_SECRET_BYTES},
        )
    return value


class Settings(BaseSettings):
    """Runtime configuration of a worker and of the CLI."""

    # Errors never show the values given (a secret may be among them).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", hide_input_in_errors=True
    )

    app_id: str = Field("segmenter", description="Faust app id: consumer group and topic prefix")
    kafka_bootstrap_servers: str = f"127.0.0.1:{DEVSTACK_KAFKA_PORT}"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client connects: TLS, SASL, both or neither"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password; never printed")
    kafka_ssl_cafile: Path | None = Field(
        None, description="PEM file of the CAs to trust (default: the system's)"
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (mutual TLS); needs the key file"
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of the client certificate (mutual TLS)"
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="check that the broker's certificate names the host connected to"
    )
    redis_url: RedisUrl = Field(
        RedisUrl(f"redis://127.0.0.1:{DEVSTACK_REDIS_PORT}/0"),
        description="Redis to write customers' segments to; a password in it is never printed",
    )
    redis_prefix: str = Field("segmenter:", description="prefix of every Redis key we write")
    redis_cluster: bool = Field(
        False, description="the Redis URL is a node of a Redis Cluster (the client finds the rest)"
    )
    orders_topic: str = "orders"
    transitions_topic: str = "segment-transitions"
    dlq_topic: str = "orders-dlq"
    dlq_retention_days: float = Field(
        30.0,
        gt=0,
        description="how long the dead-letter topic keeps records, when the worker creates it",
    )
    consent_topic: str = "customer-consent"
    erasure_topic: str = "customer-erasure"
    erasure_receipts_topic: str = "customer-erasure-receipts"
    consent_required: bool = Field(
        False, description="customers without a consent record are not segmented"
    )
    pseudonymisation_secret: SecretStr | None = Field(
        None,
        description="if set (at least 16 bytes), customer ids are replaced by a keyed hash "
        "before storage",
    )
    changelog_segment_ms: int = Field(
        3_600_000,
        ge=100,
        description="changelog segment age: bounds how long an erased customer's old records "
        "wait for compaction",
    )
    changelog_delete_retention_ms: int = Field(
        86_400_000,
        ge=60_000,
        description="how long the changelog keeps an erased customer's tombstone (the topic's "
        "delete.retention.ms); a local partition store unused for half of it is rebuilt",
    )
    partitions: int = Field(4, ge=1, le=1024, description="partitions of topics we create")
    replication_factor: int = Field(1, ge=1, le=16)
    store: Literal["rocksdb", "memory"] = "rocksdb"
    startup_timeout_seconds: float = Field(
        300.0, ge=0, description="how long a starting worker waits for Kafka to answer"
    )
    session_timeout_seconds: float = Field(
        10.0,
        ge=3,
        le=300,
        description="a worker that stops heart-beating for this long (crash) loses its "
        "partitions to the others",
    )
    batch_max_records: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="records processed per batch: one changelog write per customer per batch; "
        "the batch's transitions, changelog records and Redis writes are sent together",
    )
    batch_max_wait_seconds: float = Field(
        0.0,
        ge=0,
        le=10,
        description="how long a batch may wait for more records after its first (adds up to "
        "this to latency); 0: it takes the records already fetched, up to batch_max_records",
    )
    data_dir: Path = Path(".segmenter-data")
    clock: Literal["wall", "event"] = "wall"
    clock_interval_seconds: float = Field(1.0, gt=0, le=60)
    rules_file: Path | None = None
    marketing_topic_prefix: str = Field(
        "", description="prefix of the per-transition marketing topics (customer.became_...)"
    )
    backfill: bool | None = Field(
        None, description="mark transitions as backfill (default: in event-clock mode)"
    )
    marketing_skip_backfill: bool = True
    marketing_skip_causes: frozenset[
        Literal["time", "recalibration", "rule_change", "model_refit"]
    ] = Field(
        frozenset({"rule_change", "model_refit"}),
        description="transitions with these causes stay off the marketing topics",
    )
    recalibration_interval_hours: float = Field(
        24.0, ge=0, description="quantile recalibration schedule, wall clock only (0: off)"
    )
    prediction_fit_interval_hours: float = Field(
        24.0, ge=0, description="prediction model refit schedule, wall clock only (0: off)"
    )
    prediction_min_repeat_buyers: int = Field(
        30, ge=1, description="repeat buyers a shop needs before its prediction model is fitted"
    )
    prediction_horizon_days: float = Field(
        90.0, gt=0, le=3650, description="horizon of the expected orders per customer (days)"
    )
    prediction_clv_months: int = Field(
        12, ge=1, le=240, description="horizon of the predicted customer lifetime value (months)"
    )
    prediction_discount_rate: float = Field(
        0.1, ge=0, le=10, description="annual discount rate of the predicted lifetime value"
    )
    web_port: int = Field(6066, ge=0, le=65535, description="worker HTTP port (0: no server)")
    web_host: str = Field("127.0.0.1", description="address the worker's HTTP server binds")
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token (at least 16 bytes) of POST /pause and /resume; unset: they "
        "are off",
    )
    insights: bool = Field(
        True,
        description="publish activity records and add them up for the segment insights "
        "(segmenter api); off: neither",
    )
    api_port: int = Field(
        6070, ge=1, le=65535, description="port of the insights API and dashboard (segmenter api)"
    )
    api_host: str = Field("127.0.0.1", description="address the insights API binds")
    api_token: SecretStr | None = Field(
        None,
        description="bearer token (at least 16 bytes) of the insights API; `segmenter api` "
        "does not start without it",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field(
        "json", description="worker logs: one JSON object per line, or plain text"
    )
    devstack_dir: Path = Path(".devstack")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: Any) -> Any:
        """A misspelt or guessed ``SEGMENTER_`` variable is an error, not silently ignored."""
        unknown = sorted(
            name.upper()
            for name in os.environ
            if name.upper().startswith(ENV_PREFIX)
            and name[len(ENV_PREFIX) :].lower() not in cls.model_fields
        )
        if unknown:
            raise PydanticCustomError(
                "unknown_setting",
                "unknown environment variable(s) {names}: no such setting (see the settings "
                "reference for the names)",
                {"names": ", ".join(unknown)},
            )
        return data

    @field_validator(
        "kafka_sasl_username",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty variable (``SEGMENTER_KAFKA_SSL_CAFILE=``) is no value, not a path."""
        return None if value == "" else value

    @field_validator("pseudonymisation_secret")
    @classmethod
    def _pseudonymisation_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return _secret_long_enough(value, "SEGMENTER_PSEUDONYMISATION_SECRET")

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        return _secret_long_enough(value, "SEGMENTER_ADMIN_TOKEN")

    @field_validator("api_token")
    @classmethod
    def _api_token(cls, value: SecretStr | None) -> SecretStr | None:
        return _secret_long_enough(value, "SEGMENTER_API_TOKEN")

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        """Combinations of the Kafka security settings that cannot work are refused at start,
        each error naming the variable to fix."""
        _check_kafka_security(self)
        return self

    @property
    def uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @property
    def clock_topic(self) -> str:
        """Internal topic through which the wall clock hands due customers to their partition."""
        return f"{self.app_id}-clock"

    @property
    def calibrations_topic(self) -> str:
        """Compacted topic with the latest calibration of every shop (key: shop id)."""
        return f"{self.app_id}-calibrations"

    @property
    def predictions_topic(self) -> str:
        """Compacted topic with the latest prediction model of every shop (key: shop id)."""
        return f"{self.app_id}-predictions"

    @property
    def secret(self) -> bytes | None:
        secret = self.pseudonymisation_secret
        return secret.get_secret_value().encode() if secret else None

    @property
    def is_backfill(self) -> bool:
        return self.backfill if self.backfill is not None else self.clock == "event"

    def marketing_topic(self, transition: str) -> str:
        return f"{self.marketing_topic_prefix}{transition}"

    @property
    def table_name(self) -> str:
        return "customers"

    @property
    def changelog_topic(self) -> str:
        """Faust names a table's changelog ``<app id>-<table>-changelog``."""
        return f"{self.app_id}-{self.table_name}-changelog"


def _kafka_setting_error(message: str, **names: str) -> PydanticCustomError:
    return PydanticCustomError("kafka_security", message, names)


def _check_kafka_security(settings: Settings) -> None:
    protocol = f"SEGMENTER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
    if settings.uses_sasl:
        for variable, value in (
            ("SEGMENTER_KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
            ("SEGMENTER_KAFKA_SASL_PASSWORD", settings.kafka_sasl_password),
        ):
            if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
                raise _kafka_setting_error(
                    "{protocol} needs {variable}", protocol=protocol, variable=variable
                )
    elif settings.kafka_sasl_username is not None or settings.kafka_sasl_password is not None:
        raise _kafka_setting_error(
            "SEGMENTER_KAFKA_SASL_USERNAME/PASSWORD are set but {protocol} does not use SASL "
            "(SASL_SSL or SASL_PLAINTEXT does)",
            protocol=protocol,
        )
    files = {
        "SEGMENTER_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "SEGMENTER_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "SEGMENTER_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
    }
    for variable, path in files.items():
        if path is None:
            continue
        if not settings.uses_tls:
            raise _kafka_setting_error(
                "{variable} is set but {protocol} does not use TLS (SSL or SASL_SSL does)",
                variable=variable,
                protocol=protocol,
            )
        if not path.is_file():
            raise _kafka_setting_error(
                "{variable}={path}: no such file", variable=variable, path=str(path)
            )
    if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
        raise _kafka_setting_error(
            "SEGMENTER_KAFKA_SSL_CERTFILE and SEGMENTER_KAFKA_SSL_KEYFILE go together "
            "(mutual TLS needs both)"
        )
