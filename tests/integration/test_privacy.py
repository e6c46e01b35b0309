"""Consent and erasure on the real broker, worker and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from config.rules import load_rules
from models.routing import marketing_transitions
from streams.changelog import read_table, read_topic
from streams.cli.replay import publish
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import run_cli, settings_from, wait_for

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC)


def order(customer: str, order_id: str, days_ago: float, total: int = 5_000) -> dict[str, Any]:
    return {
        "type": "order_placed",
        "order_id": order_id,
        "customer_id": customer,
        "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
        "currency": "EUR",
        "total": total,
    }


def consent(customer: str, granted: bool) -> tuple[bytes, bytes]:
    event = {
        "type": "consent_granted" if granted else "consent_withdrawn",
        "customer_id": customer,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    return customer.encode(), orjson.dumps(event)


@pytest.fixture
def privacy_worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {**isolated, "clock": "wall", "changelog_segment_ms": "1000"}
    asyncio.run(ensure_topics(settings_from(overrides), marketing_transitions(load_rules())))
    log = tmp_path / "worker.log"
    process = spawn_worker(overrides, log)
    yield overrides
    assert stop_worker(process) == 0, log.read_text()[-3000:]


async def _publish(settings: Any, *events: dict[str, Any]) -> None:
    await publish(settings, iter((e["customer_id"].encode(), orjson.dumps(e)) for e in events))


async def _records(settings: Any, topic: str) -> list[Any]:
    return [r async for r in read_topic(settings, topic)]


async def _moves(settings: Any, topic: str, customer: str) -> list[tuple[Any, ...]]:
    return [
        (t["from_segment"], t["to_segment"], t["cause"]["kind"])
        for t in (orjson.loads(r.value) for r in await _records(settings, topic))
        if t["customer_id"] == customer and t["type"] == "segment_changed"
    ]


async def _settled(settings: Any, marker: str) -> None:
    """Wait until the worker has processed everything published so far: a marker customer's
    order, published last, shows up in the table (one partition: processed in order)."""
    await _publish(settings, order(marker, f"{marker}-{datetime.now(UTC).timestamp()}", 0))
    await wait_for(
        lambda: read_table(settings),
        lambda table: (
            f"default/{marker}" in table
            and any(o.startswith(f"{marker}-") for o in table[f"default/{marker}"].state.orders)
        ),
        60,
        "the worker to catch up",
    )


async def test_erasure_leaves_nothing_but_a_tombstone(privacy_worker: dict[str, str]) -> None:
    settings = settings_from(privacy_worker)
    p = settings.redis_prefix
    await _publish(
        settings,
        order("erin", "e1", 10),
        order("erin", "e2", 5),
        order("frank", "f1", 9),
        order("frank", "f2", 4),
    )
    moves = await wait_for(
        lambda: _moves(settings, settings.transitions_topic, "frank"),
        lambda m: len(m) == 2,
        60,
        "frank's transitions",
    )
    assert moves[-1] == ("new", "potential_loyalist", "order_placed")
    client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    keys = RedisCache(client, p)  # the key layout
    try:
        # Redis is written after a batch's transitions are acknowledged: wait for both hashes.
        cached = await wait_for(
            lambda: asyncio.gather(
                client.hgetall(keys.customer_key("default", "frank")),
                client.hgetall(keys.customer_key("default", "erin")),
            ),
            lambda hashes: all(h.get("segment") for h in hashes),
            60,
            "frank and erin in Redis",
        )
        frank_before, erin = cached
        assert erin["segment"] == "potential_loyalist"

        receipt = orjson.loads(await run_cli(privacy_worker, "forget", "erin"))
        assert {k: receipt[k] for k in ("type", "shop_id", "state_deleted", "cache_deleted")} == {
            "type": "erasure_completed",
            "shop_id": "default",
            "state_deleted": True,
            "cache_deleted": True,
        }
        assert "erin" not in orjson.dumps(receipt).decode()  # no personal data in the receipt

        assert await client.exists(keys.customer_key("default", "erin")) == 0
        members = [
            await client.smembers(key) for key in keys.segment_keys("default", "potential_loyalist")
        ]
        assert set().union(*members) == {"frank"}
        assert await client.hgetall(keys.customer_key("default", "frank")) == frank_before
    finally:
        await client.aclose()
    table = await read_table(settings)
    assert "default/erin" not in table and "default/frank" in table
    assert (await _moves(settings, settings.transitions_topic, "erin"))[-1] == (
        "potential_loyalist",
        None,
        "erasure",
    )

    async def erin_in_changelog() -> list[Any]:
        # New writes roll the changelog segment, so the cleaner can compact erin's old values.
        await _publish(settings, order("frank", f"nudge-{datetime.now(UTC).timestamp()}", 0))
        return [
            r.value
            for r in await _records(settings, settings.changelog_topic)
            if r.key == b"default/erin"
        ]

    assert await wait_for(
        erin_in_changelog,
        lambda values: values == [None],
        120,
        "compaction to leave only erin's tombstone",
        interval=1.0,
    ) == [None]

    # later orders start nothing without new consent ...
    await _publish(settings, order("erin", "e3", 0))
    await _settled(settings, "marker1")
    assert "default/erin" not in await read_table(settings)
    # ... and a fresh, empty state after it
    await publish(
        settings.model_copy(update={"orders_topic": settings.consent_topic}),
        iter([consent("erin", True)]),
    )
    await _publish(settings, order("erin", "e4", 0))
    await _settled(settings, "marker2")
    erin = (await read_table(settings))["default/erin"].state
    assert (sorted(erin.orders), erin.segment) == (["e4"], "new")


async def test_withdrawn_consent_stops_marketing_and_clears_redis(
    privacy_worker: dict[str, str],
) -> None:
    settings = settings_from(privacy_worker)
    p = settings.redis_prefix
    became = settings.marketing_topic("customer.became_potential_loyalist")
    left = settings.marketing_topic("customer.left_all_segments")
    await _publish(settings, order("gina", "g1", 8), order("gina", "g2", 3))
    await wait_for(
        lambda: _moves(settings, became, "gina"),
        lambda m: len(m) == 1,
        60,
        "gina on the marketing topic",
    )
    consents = settings.model_copy(update={"orders_topic": settings.consent_topic})

    await publish(consents, iter([consent("gina", False)]))
    assert await wait_for(
        lambda: _moves(settings, left, "gina"), lambda m: len(m) == 1, 60, "gina's exit"
    ) == [("potential_loyalist", None, "consent_withdrawn")]
    client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    keys = RedisCache(client, p)  # the key layout
    try:
        # Redis is cleared in the commit of the batch whose transitions were just read: after
        # the broker acknowledged them, so a moment later
        await wait_for(
            lambda: client.exists(keys.customer_key("default", "gina")),
            lambda exists: exists == 0,
            30,
            "gina gone from Redis",
        )
        await _publish(settings, order("gina", "g3", 0, total=90_000))
        await _settled(settings, "marker")
        assert await client.exists(keys.customer_key("default", "gina")) == 0
        assert len(await _moves(settings, settings.transitions_topic, "gina")) == 3  # no new one
        assert await _moves(settings, became, "gina") == [
            ("new", "potential_loyalist", "order_placed")
        ]

        await publish(consents, iter([consent("gina", True)]))
        await wait_for(
            lambda: client.hgetall(keys.customer_key("default", "gina")),
            lambda h: h.get("order_count") == "3",
            60,
            "gina back in Redis",
        )
    finally:
        await client.aclose()
    assert (await _moves(settings, settings.transitions_topic, "gina"))[-1][2] == "consent_granted"


async def test_raw_ids_stay_out_of_the_worker_log_with_pseudonymisation(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """With pseudonymisation on, nothing the worker logs names a raw customer id: not its
    orders, not a dead-lettered record whose reason quotes its key, not its erasure."""
    overrides = {
        **isolated,
        "clock": "wall",
        "pseudonymisation_secret": "a-secret-of-at-least-16-bytes",
    }
    settings = settings_from(overrides)
    await ensure_topics(settings, marketing_transitions(load_rules()))
    log = tmp_path / "worker.log"
    process = spawn_worker(overrides, log)
    try:
        mismatched = order("raw-ruth-2", "rm", 1)
        await publish(
            settings,
            iter(
                [
                    (b"raw-ruth-1", orjson.dumps(order("raw-ruth-1", "r1", 5))),
                    (b"raw-ruth-1", orjson.dumps(mismatched)),  # key_mismatch: dead-lettered
                    (b"raw-ruth-1", orjson.dumps(order("raw-ruth-1", "r2", 2))),
                ]
            ),
        )
        await wait_for(
            lambda: read_table(settings),
            lambda table: any(len(s.state.orders) == 2 for s in table.values()),
            60,
            "ruth's two orders",
        )
        receipt = orjson.loads(await run_cli(overrides, "forget", "raw-ruth-1"))
        assert receipt["state_deleted"] is True
        assert await read_table(settings) == {}
    finally:
        assert stop_worker(process) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "dead-lettered" in text and "key_mismatch" in text  # the path that quotes ids ran
    assert "raw-ruth" not in text
