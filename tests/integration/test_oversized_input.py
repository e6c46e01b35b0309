"""Records too large for the producer or the broker, on a broker with default limits: an input
record just under the broker's limit is dead-lettered as its beginning; a customer whose
stored state would outgrow a record never stops the worker. Either way the worker goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from models.routing import marketing_transitions
from streams.changelog import read_table, read_topic
from streams.clients import kafka_options
from streams.dlq import KEPT_BYTES, DeadLetter
from streams.lag import group_lag
from streams.sink import MAX_RECORD_BYTES
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


def _hoarder_order(n: int) -> dict[str, object]:
    """An order within every input limit (1,000 lines, 128-character categories, about 180
    KB) whose categories are all new to the customer."""
    lines = [
        {
            "sku": f"s{i}",
            "category": f"{n:02d}-{i:04d}-" + "c" * 120,
            "quantity": 1,
            "unit_price": 1,
        }
        for i in range(1000)
    ]
    order = placed("hoarder", f"h-o{n}", n, total=1000)
    order["lines"] = lines
    return order


async def test_a_customer_whose_state_would_outgrow_a_record_never_stops_the_worker(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """Eight orders of 1,000 distinct long categories each (the stored state would pass the
    broker's default record limit): the worker never exits, every order is accounted for (in
    the customer's state or dead-lettered as ``state_too_large``), the stored state stays
    under the record limit, and a later customer is processed."""
    settings = settings_from(isolated)
    await ensure_topics(settings, marketing_transitions(RULES))
    records = [orjson.dumps(_hoarder_order(n)) for n in range(8)]
    assert all(180_000 < len(r) < 256 * 1024 for r in records)
    producer = AIOKafkaProducer(**kafka_options(settings), max_request_size=2**20)
    await producer.start()
    try:
        for value in records:
            await producer.send_and_wait(settings.orders_topic, key=b"hoarder", value=value)
        after = orjson.dumps(placed("carol", "c-o1", 9))
        await producer.send_and_wait(settings.orders_topic, key=b"carol", value=after)
    finally:
        await producer.stop()
    process = spawn_worker(isolated, tmp_path / "worker.log")
    try:
        lag = await wait_for(
            lambda: group_lag(settings),
            lambda ls: bool(ls) and all(p.committed == p.end for p in ls),
            120,
            "every order committed",
        )
        assert sum(p.end for p in lag) == 9
        table = await read_table(settings)
        assert table["default/carol"].state.segment == "new"
        letters = [
            DeadLetter.from_record(r) async for r in read_topic(settings, settings.dlq_topic)
        ]
        assert {letter.reason for letter in letters} <= {"state_too_large"}
        stored = table["default/hoarder"]
        counted = len(stored.state.counted_orders())
        assert counted + len(letters) == 8  # every order accounted for
        assert counted >= 1
        raw = [
            r
            async for r in read_topic(settings, settings.changelog_topic)
            if r.key == b"default/hoarder"
        ]
        assert raw and max(len(r.value or b"") for r in raw) <= MAX_RECORD_BYTES
        assert process.poll() is None  # never exited
    finally:
        status = await asyncio.to_thread(stop_worker, process)
    assert status == 0, (tmp_path / "worker.log").read_text()[-3000:]
