"""docker-compose.yml cannot run here; check that it agrees with the settings model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_worker_environment_is_valid_settings() -> None:
    env = _compose()["services"]["worker"]["environment"]
    unknown = {k for k in env if k.removeprefix("SEGMENTER_").lower() not in Settings.model_fields}
    assert unknown == set()
    settings = Settings(**{k.removeprefix("SEGMENTER_").lower(): v for k, v in env.items()})
    assert settings.store == "rocksdb"
    assert settings.clock == "wall"


def test_worker_points_at_the_compose_kafka_and_redis() -> None:
    services = _compose()["services"]
    env = services["worker"]["environment"]
    kafka_host, kafka_port = env["SEGMENTER_KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert kafka_host == "kafka"
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"kafka:{kafka_port}" in advertised
    assert env["SEGMENTER_REDIS_URL"].startswith("redis://redis:6379")
    assert set(services["worker"]["depends_on"]) == {"kafka", "redis"}


def test_topic_names_match_the_defaults() -> None:
    env = _compose()["services"]["worker"]["environment"]
    defaults = Settings.model_fields
    for name in ("orders_topic", "transitions_topic", "dlq_topic"):
        assert env[f"SEGMENTER_{name.upper()}"] == defaults[name].default


def test_compose_kafka_does_not_auto_create_topics() -> None:
    # The worker creates its topics with matching partition counts; auto-created topics
    # (one partition) would not match the internal clock topic.
    kafka = _compose()["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_runs_the_same_kafka_version_as_the_devstack() -> None:
    from streams.cli.devstack import KAFKA_VERSION

    assert _compose()["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_every_published_port_is_on_the_loopback_address_only() -> None:
    # Kafka, Redis, Grafana and the worker's port take no password: reachable from this
    # machine only.
    services = _compose()["services"]
    published = {name: service.get("ports", []) for name, service in services.items()}
    assert all(published[name] for name in ("kafka", "redis", "worker"))
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str), (name, port)
            assert port.startswith("127.0.0.1:") and port.count(":") == 2, (name, port)
