"""A record just under the broker's limit, more than the producer can send as a dead letter:
it is dead-lettered as its beginning, named, and the worker goes on with the next record."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models.routing import marketing_transitions
from streams.changelog import read_topic
from streams.clients import kafka_options
from streams.dlq import KEPT_BYTES, DeadLetter
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import settings_from, wait_for
from tests.factories import placed
from tests.unit.core import RULES

pytestmark = pytest.mark.integration


async def test_a_record_of_a_million_bytes_is_dead_lettered_and_the_worker_goes_on(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_from(isolated)
    await ensure_topics(settings, marketing_transitions(RULES))
    huge = placed("bob", "b-o1", 0)
    huge["note"] = "x" * 1_000_100  # an unknown field: the record is too large all the same
    value = orjson.dumps(huge)
    after = orjson.dumps(placed("bob", "b-o2", 1))
    producer = AIOKafkaProducer(**kafka_options(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.orders_topic, key=b"bob", value=value)
        await producer.send_and_wait(settings.orders_topic, key=b"bob", value=after)
    finally:
        await producer.stop()
    process = spawn_worker(isolated, tmp_path / "worker.log")
    try:

        async def transitions() -> list[dict[str, object]]:
            found = [r async for r in read_topic(settings, settings.transitions_topic)]
            return [orjson.loads(r.value) for r in found]

        moves = await wait_for(transitions, lambda ts: len(ts) >= 1, 90, "the next order")
        assert [(t["to_segment"], t["cause"]["order_id"]) for t in moves[:1]] == [  # type: ignore[index]
            ("new", "b-o2")
        ]

        async def letters() -> list[DeadLetter]:
            return [
                DeadLetter.from_record(r) async for r in read_topic(settings, settings.dlq_topic)
            ]

        (letter,) = await wait_for(letters, lambda ls: len(ls) >= 1, 60, "the dead letter")
        assert letter.reason == "too_large"
        assert letter.truncated_from == len(value) + len(b"bob")
        assert letter.value == value[:KEPT_BYTES]
        assert process.poll() is None  # the worker goes on
    finally:
        status = await asyncio.to_thread(stop_worker, process)
    assert status == 0, (tmp_path / "worker.log").read_text()[-3000:]
