"""Erasure of customers whose orders a webshop published with librdkafka on its defaults
(confluent-kafka: CRC32 of the key, where aiokafka and the Java client use murmur2), on the
real broker, worker and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer

from config.rules import load_rules
from models.routing import marketing_transitions
from streams.changelog import read_table, read_topic
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import cli_result, run_cli, settings_from, wait_for

pytestmark = pytest.mark.integration
PARTITIONS = 4
CUSTOMERS = [f"webshop-customer-{n:02d}" for n in range(21)]  # the last: erased by the shop


@pytest.fixture
def four_partitions(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {**isolated, "partitions": str(PARTITIONS)}
    asyncio.run(ensure_topics(settings_from(overrides), marketing_transitions(load_rules())))
    log = tmp_path / "worker.log"
    process = spawn_worker(overrides, log)
    yield overrides
    assert stop_worker(process) == 0, log.read_text()[-3000:]


def _produce(bootstrap: str, topic: str, records: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """Publish with confluent-kafka on its defaults; the partition each record went to."""
    producer = Producer({"bootstrap.servers": bootstrap})
    partitions: dict[int, int] = {}

    def delivered(error: Any, message: Any, index: int) -> None:
        assert error is None, error
        partitions[index] = message.partition()

    for index, (key, value) in enumerate(records):
        producer.produce(
            topic,
            key=key.encode(),
            value=orjson.dumps(value),
            on_delivery=lambda e, m, i=index: delivered(e, m, i),
        )
    assert producer.flush(30) == 0
    return [partitions[i] for i in range(len(records))]


def _order(customer: str) -> dict[str, Any]:
    return {
        "type": "order_placed",
        "order_id": f"{customer}-o1",
        "customer_id": customer,
        "occurred_at": (datetime.now(UTC) - timedelta(days=3)).isoformat(),
        "currency": "EUR",
        "total": 5_000,
    }


async def test_erasure_finds_customers_a_librdkafka_producer_partitioned(
    four_partitions: dict[str, str],
) -> None:
    settings = settings_from(four_partitions)
    bootstrap = settings.kafka_bootstrap_servers
    placed = _produce(bootstrap, settings.orders_topic, [(c, _order(c)) for c in CUSTOMERS])
    murmur = [(murmur2(c.encode()) & 0x7FFFFFFF) % PARTITIONS for c in CUSTOMERS]
    misrouted = sum(p != m for p, m in zip(placed, murmur, strict=True))
    assert misrouted >= 5  # where a request partitioned by murmur2 alone would miss them

    await wait_for(
        lambda: read_table(settings),
        lambda table: all(f"default/{c}" in table for c in CUSTOMERS),
        90,
        "every customer in the table",
    )
    client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    keys = RedisCache(client, settings.redis_prefix)  # the key layout
    try:

        async def cached() -> list[int]:
            return [await client.exists(keys.customer_key("default", c)) for c in CUSTOMERS]

        await wait_for(cached, lambda found: all(found), 60, "every customer in Redis")

        receipts = []
        for start in range(0, 20, 5):  # five commands at a time
            receipts += await asyncio.gather(
                *(run_cli(four_partitions, "forget", c) for c in CUSTOMERS[start : start + 5])
            )
        for customer, partition, printed in zip(CUSTOMERS, placed, receipts, strict=False):
            receipt = orjson.loads(printed)
            assert (
                receipt["state_deleted"],
                receipt["cache_deleted"],
                receipt["partitions"],
                receipt["state_found_on"],
            ) == (True, True, PARTITIONS, [partition]), customer

        # the webshop erases the last one itself, partitioned like its orders
        last = CUSTOMERS[-1]
        request = {
            "type": "erasure_requested",
            "request_id": "shop-request-1",
            "customer_id": last,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        assert _produce(bootstrap, settings.erasure_topic, [(last, request)]) == [placed[-1]]

        async def shop_receipts() -> list[Any]:
            return [
                orjson.loads(r.value)
                async for r in read_topic(settings, settings.erasure_receipts_topic)
                if orjson.loads(r.value)["request_id"] == "shop-request-1"
            ]

        receipt = (await wait_for(shop_receipts, bool, 60, "the shop's receipt"))[0]
        assert (receipt["state_deleted"], receipt["partition"]) == (True, placed[-1])

        assert await cached() == [0] * len(CUSTOMERS)
        members = {
            member
            for segment in load_rules().segment_names
            for key in keys.segment_keys("default", segment)
            for member in await client.smembers(key)
        }
        assert members.isdisjoint(CUSTOMERS)
    finally:
        await client.aclose()
    table = await read_table(settings)
    assert [c for c in CUSTOMERS if f"default/{c}" in table] == []

    # a customer nobody stored: said plainly, and a non-zero exit
    unknown = cli_result(four_partitions, "forget", "never-seen")
    assert unknown.returncode == 3, unknown.stderr
    assert "nothing to erase: no partition (4) held a state" in unknown.stderr
    receipt = orjson.loads(unknown.stdout)
    assert (receipt["state_deleted"], receipt["state_found_on"]) == (False, [])
