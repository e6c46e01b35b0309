"""Topics the product creates are ready when ``ensure_topics`` returns: a consumer started
at once reads every partition's offsets without an error on the way."""

from __future__ import annotations

import logging

import pytest
from aiokafka import AIOKafkaConsumer

from streams.topics import ensure_topics
from tests.conftest import settings_from

pytestmark = pytest.mark.integration


async def test_a_consumer_started_right_after_the_topics_are_created_sees_no_error(
    isolated: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from({**isolated, "partitions": "12"})
    await ensure_topics(settings)
    caplog.set_level(logging.WARNING, logger="aiokafka")
    consumer = AIOKafkaConsumer(
        settings.transitions_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
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
