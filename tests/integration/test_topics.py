"""Topics the product creates are ready when ``ensure_topics`` returns: a consumer started
at once reads every partition's offsets without an error on the way."""

from __future__ import annotations

import logging

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.clients import kafka_options
from streams.topics import ensure_topics
from tests.conftest import cli_result, settings_from

pytestmark = pytest.mark.integration


async def test_a_consumer_started_right_after_the_topics_are_created_sees_no_error(
    isolated: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from({**isolated, "partitions": "12"})
    await ensure_topics(settings)
    caplog.set_level(logging.WARNING, logger="aiokafka")
    consumer = AIOKafkaConsumer(
        settings.transitions_topic,
        **kafka_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        # the first fetch asks every partition's leader for its offsets
        assert await consumer.getmany(timeout_ms=2000) == {}
        assert len(consumer.assignment()) == 12
        assert all([await consumer.position(tp) == 0 for tp in consumer.assignment()])
    finally:
        await consumer.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []


async def test_a_worker_refuses_topics_whose_partition_counts_differ(
    isolated: dict[str, str],
) -> None:
    """Records are keyed by customer, so the clock, consent and erasure topics must have the
    orders topic's partitions; a worker says which topic differs, and stops (no traceback)."""
    await ensure_topics(settings_from({**isolated, "partitions": "2"}))
    overrides = {**isolated, "orders_topic": isolated["orders_topic"] + "-3", "partitions": "3"}
    result = cli_result(overrides, "worker")
    assert result.returncode == 1, result.stderr[-2000:]
    clock = settings_from(overrides).clock_topic
    assert (
        f"Error: topic {clock} has 2 partitions but {overrides['orders_topic']} has 3"
        in result.stderr
    ), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


async def test_the_dead_letter_topic_keeps_records_for_the_configured_days(
    isolated: dict[str, str],
) -> None:
    settings = settings_from({**isolated, "dlq_retention_days": "45"})
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.dlq_topic)]
        )
    finally:
        await admin.close()
    configs = {
        entry[0]: entry[1]
        for response in responses
        for resource in response.resources
        for entry in resource[4]
    }
    assert configs["retention.ms"] == str(45 * 86_400_000)
