"""The settings: secrets stay out of what is printed, weak secrets and unknown variables are
refused with the variable named."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from config.settings import MIN_SECRET_BYTES, Settings

URL = "redis://:hunter2@cache.internal:6379/0"


def test_the_redis_password_is_masked_wherever_the_settings_are_printed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SEGMENTER_REDIS_URL", URL)
    settings = Settings()
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("redis at %s", settings.redis_url)
    printed = [
        repr(settings),
        str(settings),
        str(settings.redis_url),
        f"{settings.redis_url}",
        settings.model_dump_json(),
        caplog.text,
    ]
    with pytest.raises(TypeError):  # not a str: nothing copies the password out by accident
        "url: " + settings.redis_url  # type: ignore[operator]
    for text in printed:
        assert "hunter2" not in text
    assert "redis://:***@cache.internal:6379/0" in repr(settings)


def test_the_redis_url_to_connect_with_is_the_real_one() -> None:
    url = Settings(redis_url=URL).redis_url.get_secret_value()  # type: ignore[arg-type]
    assert url == URL
    parts = urlsplit(url)  # as the CLI and the Redis client read it
    assert (parts.password, parts.hostname, parts.port) == ("hunter2", "cache.internal", 6379)


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("redis://user:hunter2@h:1/0", "redis://user:***@h:1/0"),
        ("rediss://h:1/0?password=hunter2&db=2", "rediss://h:1/0?password=***&db=2"),
        ("unix://:hunter2@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://127.0.0.1:16379/0", "redis://127.0.0.1:16379/0"),
        ("redis://:hunter2@[::1/0", "redis://:***@[::1/0"),  # not a valid URL: masked all the same
        ("redis://:hun#ter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:hun/ter?2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:a@b@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://hunter2@h:6379/0", "redis://***@h:6379/0"),
    ],
)
def test_every_form_of_redis_password_is_masked(url: str, printed: str) -> None:
    assert str(Settings(redis_url=url).redis_url) == printed  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", ["", "abc123xyz", "x" * (MIN_SECRET_BYTES - 1)])
def test_a_short_pseudonymisation_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("SEGMENTER_PSEUDONYMISATION_SECRET", secret)
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert f"SEGMENTER_PSEUDONYMISATION_SECRET must be at least {MIN_SECRET_BYTES} bytes" in message
    if secret:
        assert secret not in message


def test_a_long_enough_secret_turns_pseudonymisation_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().secret is None
    monkeypatch.setenv("SEGMENTER_PSEUDONYMISATION_SECRET", "é" * (MIN_SECRET_BYTES // 2))  # bytes
    assert Settings().secret == ("é" * (MIN_SECRET_BYTES // 2)).encode()
    assert "é" not in repr(Settings())


def test_a_short_admin_token_is_refused_and_a_good_one_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTER_ADMIN_TOKEN", "letmein")
    with pytest.raises(ValidationError, match="SEGMENTER_ADMIN_TOKEN must be at least 16 bytes"):
        Settings()
    monkeypatch.setenv("SEGMENTER_ADMIN_TOKEN", "a-long-enough-admin-token")
    settings = Settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "a-long-enough-admin-token"
    assert "a-long-enough-admin-token" not in repr(settings) + settings.model_dump_json()


def test_unknown_segmenter_variables_are_refused_by_name_without_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTER_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("SEGMENTER_REDIS_URLS", "redis://x")
    monkeypatch.setenv("OTHER_APP_SETTING", "1")  # not ours: ignored
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert refused.value.error_count() == 1
    (error,) = refused.value.errors()
    assert error["msg"] == (
        "unknown environment variable(s) SEGMENTER_REDIS_URLS, SEGMENTER_SASL_PASSWORD: "
        "no such setting (see the settings reference for the names)"
    )
    assert "hunter2" not in str(refused.value)


def test_invalid_values_are_reported_without_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTER_PARTITIONS", "hunter2")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "partitions" in str(refused.value)
    assert "hunter2" not in str(refused.value)


SASL = {
    "SEGMENTER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SEGMENTER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SEGMENTER_KAFKA_SASL_USERNAME": "segmenter",
    "SEGMENTER_KAFKA_SASL_PASSWORD": "s3cret-kafka-password",
}


def _refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    return str(refused.value)


def test_kafka_connects_in_plaintext_by_default() -> None:
    settings = Settings()
    assert (settings.kafka_security_protocol, settings.uses_tls, settings.uses_sasl) == (
        "PLAINTEXT",
        False,
        False,
    )
    assert settings.kafka_ssl_check_hostname is True


@pytest.mark.parametrize(
    "missing", ["SEGMENTER_KAFKA_SASL_USERNAME", "SEGMENTER_KAFKA_SASL_PASSWORD"]
)
def test_sasl_needs_a_user_and_a_password(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    message = _refused(monkeypatch, {k: v for k, v in SASL.items() if k != missing})
    assert f"SEGMENTER_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs {missing}" in message
    assert "s3cret-kafka-password" not in message


def test_sasl_credentials_without_sasl_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**SASL, "SEGMENTER_KAFKA_SECURITY_PROTOCOL": "SSL"}
    message = _refused(monkeypatch, env)
    assert "does not use SASL" in message
    assert "s3cret-kafka-password" not in message


def test_a_missing_certificate_file_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {**SASL, "SEGMENTER_KAFKA_SSL_CAFILE": str(tmp_path / "nowhere.pem")}
    message = _refused(monkeypatch, env)
    assert f"SEGMENTER_KAFKA_SSL_CAFILE={tmp_path / 'nowhere.pem'}: no such file" in message


def test_tls_files_without_tls_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    message = _refused(monkeypatch, {"SEGMENTER_KAFKA_SSL_CAFILE": str(ca)})
    assert "SEGMENTER_KAFKA_SSL_CAFILE is set but" in message
    assert "does not use TLS" in message


def test_a_client_certificate_needs_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("")
    env = {"SEGMENTER_KAFKA_SECURITY_PROTOCOL": "SSL", "SEGMENTER_KAFKA_SSL_CERTFILE": str(cert)}
    assert "go together" in _refused(monkeypatch, env)


def test_an_empty_file_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTER_KAFKA_SSL_CAFILE", "")
    assert Settings().kafka_ssl_cafile is None
