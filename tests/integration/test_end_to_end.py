"""The running system: a real worker process on the devstack's Kafka and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from streams.changelog import read_table, read_topic
from streams.cli.replay import publish
from streams.insights.store import SHOPS_KEY, totals_key, version_key
from streams.lag import group_lag
from streams.redis_cache import RedisCache
from streams.redis_layout import bucket
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, run_cli, settings_from, wait_for
from tests.factories import at, cancelled, placed

pytestmark = pytest.mark.integration

BAD_JSON = b'{"type": "order_placed", "order_id": "broken'
BAD_AMOUNT = orjson.dumps({**placed("erin", "e-o1", 50), "total": -100})


def _stream() -> list[tuple[bytes | None, bytes]]:
    """Orders of five customers, sorted by time, with a duplicate and two bad records."""
    events = [
        placed("alice", "a-o1", 0, total=12_000),
        placed("carol", "c-o1", 1),
        cancelled("carol", "c-o1", 2),
        placed("bob", "b-o1", 5),
        placed("alice", "a-o2", 10, total=12_000),
        placed("alice", "a-o2", 10, total=12_000),  # the webshop delivered it twice
        placed("alice", "a-o3", 20, total=12_000),
        placed("alice", "a-o4", 30, total=12_000),
        placed("dave", "d-o1", 120, total=3_000),
    ]
    records: list[tuple[bytes | None, bytes]] = [
        (e["customer_id"].encode(), orjson.dumps(e)) for e in events
    ]
    records.insert(4, (b"x", BAD_JSON))  # offset 4
    records.insert(7, (b"erin", BAD_AMOUNT))  # offset 7
    return records


EXPECTED_TAGS = [
    # customer, tag, change, order id
    ("alice", "full_price_buyer", "added", "a-o2"),
    ("alice", "prefers_shoes", "added", "a-o2"),
]
EXPECTED = [
    # customer, from, to, cause, order id, event time
    ("alice", None, "new", "order_placed", "a-o1", at(0)),
    ("carol", None, "new", "order_placed", "c-o1", at(1)),
    ("carol", "new", None, "order_cancelled", "c-o1", at(2)),
    ("bob", None, "new", "order_placed", "b-o1", at(5)),
    ("alice", "new", "potential_loyalist", "order_placed", "a-o2", at(10)),
    ("alice", "potential_loyalist", "best_customer", "order_placed", "a-o4", at(30)),
    # dave's order at day 120 moves the event-time clock past two due times:
    ("alice", "best_customer", "inactive", "time", None, at(60)),  # 3 x 10-day rhythm
    ("bob", "new", "inactive", "time", None, at(95)),  # single order: 90 days
    ("dave", None, "new", "order_placed", "d-o1", at(120)),
]


@pytest.fixture
def worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {**isolated, "web_port": str(free_port())}
    asyncio.run(ensure_topics(settings_from(overrides)))
    process = spawn_worker(overrides, tmp_path / "worker.log")
    yield overrides
    status = stop_worker(process)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
    assert status == 0, log[-3000:]


async def _transitions(settings) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [orjson.loads(r.value) async for r in read_topic(settings, settings.transitions_topic)]


async def test_orders_become_exact_transitions_redis_entries_and_dead_letters(
    worker: dict[str, str],
) -> None:
    settings = settings_from(worker)
    records = _stream()
    assert await publish(settings, iter(records)) == len(records)

    await wait_for(
        lambda: _transitions(settings),
        lambda ts: len(ts) >= len(EXPECTED) + len(EXPECTED_TAGS),
        120,
        "transitions",
    )
    await wait_for(
        lambda: group_lag(settings),
        lambda lag: [(p.committed, p.end) for p in lag] == [(len(records), len(records))],
        60,
        "the worker to commit every order",
    )
    everything = await _transitions(settings)  # all of them, now that the input is committed
    transitions = [t for t in everything if t["type"] == "segment_changed"]
    tags = [
        (t["customer_id"], t["tag"], t["change"], t["cause"]["order_id"])
        for t in everything
        if t["type"] == "tag_changed"
    ]
    assert tags == EXPECTED_TAGS
    assert {t["backfill"] for t in everything} == {True}  # event-time clock: a replay
    assert {t["calibration_version"] for t in everything} == {"bootstrap"}

    got = [
        (
            t["customer_id"],
            t["from_segment"],
            t["to_segment"],
            t["cause"]["kind"],
            t["cause"]["order_id"],
            datetime.fromisoformat(t["event_time"]),
        )
        for t in transitions
    ]
    assert got == EXPECTED
    assert len({t["event_id"] for t in everything}) == len(everything)
    best = transitions[5]
    assert best["transition"] == "customer.became_best_customer"
    assert best["metrics_before"]["order_count"] == 3
    assert best["metrics_after"]["order_count"] == 4
    assert best["metrics_after"]["total_spend"] == 48_000
    assert best["rule_version"] == "rfm-2026.12.1"
    after = best["metrics_after"]
    assert (after["r_score"], after["f_score"], after["m_score"]) == (5, 4, 4)
    # a backfill never reaches the marketing topics
    marketing = settings.marketing_topic("customer.became_best_customer")
    assert [r async for r in read_topic(settings, marketing)] == []

    await _assert_redis(settings)
    await _assert_dead_letters(settings)

    table = await read_table(settings)
    assert {k: v.state.segment for k, v in table.items()} == {
        "default/alice": "inactive",
        "default/bob": "inactive",
        "default/carol": None,
        "default/dave": "new",
    }
    await _assert_stats(worker)
    await _assert_cli(worker)


async def _assert_stats(overrides: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{overrides['web_port']}/stats"
        async with session.get(url) as response:
            stats = await response.json()
    assert stats["dead_letters"] == {"malformed_json": 1, "schema_violation": 1}
    assert stats["events"]["order_placed"] == 8  # the duplicate is decoded, then ignored
    assert stats["events"]["order_cancelled"] == 1
    assert stats["events"]["customer.became_inactive"] == 2


async def _assert_cli(overrides: dict[str, str]) -> None:
    alice = orjson.loads(await run_cli(overrides, "customer", "alice", "--json"))
    assert alice["segment"] == "inactive"
    assert sorted(alice["orders"]) == ["a-o1", "a-o2", "a-o3", "a-o4"]
    assert alice["metrics"]["total_spend"] == 48_000
    assert alice["category_spend"] == {"shoes": 48_000}
    exported = [orjson.loads(line) for line in (await run_cli(overrides, "export")).splitlines()]
    assert [(c["customer_id"], c["segment"]) for c in exported] == [
        ("alice", "inactive"),
        ("bob", "inactive"),
        ("carol", None),
        ("dave", "new"),
    ]
    cached = await run_cli(overrides, "customer", "dave")
    assert "new" in cached and "3000" in cached
    # the instant of the customer's last change: dave's only order
    assert "figures as of 2025-05-01T12:00:00+00:00," in " ".join(cached.split())


async def _assert_redis(settings) -> None:  # type: ignore[no-untyped-def]
    client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    p = settings.redis_prefix
    keys = RedisCache(client, p)  # the key layout
    try:
        alice = await client.hgetall(keys.customer_key("default", "alice"))
        assert {k: alice[k] for k in ("segment", "order_count", "total_spend", "currency")} == {
            "segment": "inactive",
            "order_count": "4",
            "total_spend": "48000",
            "currency": "EUR",
        }
        assert alice["segment_since"] == at(60).isoformat()
        assert alice["average_order_value"] == "12000"
        carol = await client.hgetall(keys.customer_key("default", "carol"))
        assert (carol["segment"], carol["order_count"]) == ("", "0")
        members = {
            segment: set().union(
                *[await client.smembers(key) for key in keys.segment_keys("default", segment)]
            )
            for segment in ("inactive", "new", "best_customer", "potential_loyalist")
        }
        assert members == {
            "inactive": {"alice", "bob"},
            "new": {"dave"},
            "best_customer": set(),
            "potential_loyalist": set(),
        }
        assert alice["tags"] == '["full_price_buyer","prefers_shoes"]'
        # 30 days after her last order: r is 4 from 30 days on
        assert (alice["r_score"], alice["f_score"], alice["m_score"]) == ("4", "4", "4")
        assert sorted(await client.keys(f"{p}*")) == sorted(
            [keys.customer_key("default", c) for c in ("alice", "bob", "carol", "dave")]
            + list(
                {  # each member's bucket has a set of the segment
                    keys.segment_keys("default", segment)[bucket(customer)]
                    for segment, customer in (
                        ("inactive", "alice"),
                        ("inactive", "bob"),
                        ("new", "dave"),
                    )
                }
            )
            + [keys.marker_key(settings.app_id, 0)]  # partition 0's customers are all in Redis
            # the segment insights' totals (streams/insights/store.py)
            + [totals_key(p, "default"), version_key(p, "default"), f"{p}{SHOPS_KEY}"]
        )

        # Redis loses everything (a flush, a restart without persistence): the worker notices
        # and writes its customers again, without a replay by hand.
        snapshot = await _redis_contents(client, p)
        stored = await client.keys(f"{p}*")
        assert await client.delete(*stored) == len(stored)
        restored = await wait_for(
            lambda: _redis_contents(client, p), lambda c: c == snapshot, 60, "Redis refilled"
        )
        assert restored[keys.customer_key("default", "alice")]["segment"] == "inactive"
    finally:
        await client.aclose()


async def _redis_contents(client, prefix: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    contents: dict[str, object] = {}
    for key in await client.keys(f"{prefix}*"):
        kind = await client.type(key)
        contents[key] = (
            await client.hgetall(key)
            if kind == "hash"
            else await client.smembers(key)
            if kind == "set"
            else await client.get(key)
        )
    return contents


async def _assert_dead_letters(settings) -> None:  # type: ignore[no-untyped-def]
    dead = [r async for r in read_topic(settings, settings.dlq_topic)]
    assert [(r.key, r.value) for r in dead] == [(b"x", BAD_JSON), (b"erin", BAD_AMOUNT)]
    headers = [{k: v.decode() for k, v in r.headers} for r in dead]
    assert [h["segmenter.dlq.reason"] for h in headers] == ["malformed_json", "schema_violation"]
    assert [h["segmenter.dlq.offset"] for h in headers] == ["4", "7"]
    assert {h["segmenter.dlq.topic"] for h in headers} == {settings.orders_topic}
    assert "total" in headers[1]["segmenter.dlq.message"]
