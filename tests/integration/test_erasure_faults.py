"""Erasure that survives faults, on the real broker and Redis (neither is stopped here: a worker
is pointed at a port nothing listens on to see Redis away, and the stale store is made stale
by its files' age; stopping the shared servers is the fault suite's part)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from config.rules import load_rules
from models.routing import marketing_transitions
from streams.changelog import read_table, read_topic
from streams.cli.replay import publish
from streams.redis_cache import RedisCache
from streams.topics import ensure_tombstone_retention, ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, run_cli, settings_from, wait_for

pytestmark = pytest.mark.integration


def _order(customer: str, order_id: str, days_ago: float = 3) -> tuple[bytes, bytes]:
    event = {
        "type": "order_placed",
        "order_id": order_id,
        "customer_id": customer,
        "occurred_at": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(),
        "currency": "EUR",
        "total": 5_000,
    }
    return customer.encode(), orjson.dumps(event)


async def _latest(settings: Any, topic: str, key: bytes) -> list[bytes | None]:
    """The values of ``key`` the topic holds, oldest first."""
    return [r.value async for r in read_topic(settings, topic) if r.key == key]


async def test_a_removal_pending_while_redis_is_away_survives_kill_9(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """Erased while the worker cannot reach Redis, then the worker is killed (-9): the next
    worker finds the pending removal in the erasures table's changelog and removes the
    customer from Redis, which kept its data (its synced markers too, so no resync would)."""
    overrides = {**isolated, "clock": "wall"}
    settings = settings_from(overrides)
    await ensure_topics(settings, marketing_transitions(load_rules()))
    client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    keys = RedisCache(client, settings.redis_prefix)  # the key layout
    rita, sam = keys.customer_key("default", "rita"), keys.customer_key("default", "sam")
    erasures_changelog = f"{settings.app_id}-erasures-changelog"
    journal_key = b"redis-removal:default/rita"
    worker = spawn_worker(overrides, tmp_path / "a.log")
    try:
        await publish(settings, iter([_order("rita", "r1"), _order("sam", "s1")]))
        await wait_for(
            lambda: asyncio.gather(client.exists(rita), client.exists(sam)),
            lambda found: found == [1, 1],
            60,
            "rita and sam in Redis",
        )
        assert stop_worker(worker) == 0

        away = {**overrides, "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
        worker = spawn_worker(away, tmp_path / "b.log")
        receipt = orjson.loads(await run_cli(overrides, "forget", "rita"))
        assert (
            receipt["state_deleted"],
            receipt["cache_deleted"],
            receipt["cache_deletion_pending"],
        ) == (True, False, True)
        # stored before the receipt was sent
        stored = await _latest(settings, erasures_changelog, journal_key)
        assert orjson.loads(stored[-1] or b"null") == [0, "default", "rita"]
        worker.kill()  # -9: the pending removal in memory is gone with it
        worker.wait()
        assert await client.exists(rita) == 1  # Redis kept its data

        worker = spawn_worker(overrides, tmp_path / "c.log")
        await wait_for(lambda: client.exists(rita), lambda n: n == 0, 60, "rita out of Redis")
        assert await client.exists(sam) == 1
        members = {
            member
            for segment in load_rules().segment_names
            for key in keys.segment_keys("default", segment)
            for member in await client.smembers(key)
        }
        assert "rita" not in members and "sam" in members

        # the entry is deleted once done (its tombstone goes with the next batch's records)
        await publish(settings, iter([_order("sam", "s2", 1)]))
        await wait_for(
            lambda: _latest(settings, erasures_changelog, journal_key),
            lambda values: values[-1:] == [None],
            60,
            "the pending removal's tombstone",
        )
        assert "default/rita" not in await read_table(settings)
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "c.log").read_text()[-3000:]
        await client.aclose()


async def test_a_stale_partition_store_is_rebuilt_not_reopened(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """Worker A stops cleanly holding nina; worker B (another data directory) erases her, and
    the changelog drops her tombstone once ``delete.retention.ms`` has passed. A, restarted
    on its old store, would resume reading after its stored offset, never see the tombstone
    and bring nina back; since its store is older than half that time, it is rebuilt."""
    overrides = {
        **isolated,
        "clock": "wall",
        "changelog_segment_ms": "1000",
        "changelog_delete_retention_ms": "60000",
    }
    settings = settings_from(overrides)
    await ensure_topics(settings, marketing_transitions(load_rules()))
    a_dir = tmp_path / "a-data"
    first = {**overrides, "data_dir": str(a_dir)}
    worker = spawn_worker(first, tmp_path / "a.log")
    await publish(settings, iter([_order("nina", "n1"), _order("otto", "o1")]))
    await wait_for(
        lambda: read_table(settings),
        lambda table: {"default/nina", "default/otto"} <= set(table),
        60,
        "nina and otto in the table",
    )
    assert stop_worker(worker) == 0

    worker = spawn_worker({**overrides, "data_dir": str(tmp_path / "b-data")}, tmp_path / "b.log")
    try:
        receipt = orjson.loads(await run_cli(overrides, "forget", "nina"))
        assert receipt["state_deleted"] is True

        async def nina_in_changelog() -> list[bytes | None]:
            # new writes roll the changelog's segments, so the cleaner gets to them
            await publish(settings, iter([_order("otto", f"o-{time.time()}", 0)]))
            return await _latest(settings, settings.changelog_topic, b"default/nina")

        await wait_for(
            nina_in_changelog,
            lambda values: values == [],
            300,
            "compaction to drop nina's tombstone",
            interval=5.0,
        )
    finally:
        assert stop_worker(worker) == 0
    stores = [p for p in (a_dir / "v1" / "tables").glob("*.db") if p.is_dir()]
    assert stores  # A's store is still there, from before the erasure
    newest = max(f.stat().st_mtime for s in stores for f in s.iterdir() if f.is_file())
    assert time.time() - newest >= 30  # half of delete.retention.ms: it waited that long

    log = tmp_path / "a-again.log"
    worker = spawn_worker(first, log)
    try:
        # an order of nina: a store that still held her would add it to her old state (she
        # would be back, with both orders); the rebuilt one knows only her erasure marker
        await publish(settings, iter([_order("nina", "n2", 0), _order("otto", "o-last", 0)]))

        async def otto_orders() -> list[str]:
            table = await read_table(settings)
            return sorted(table["default/otto"].state.orders) if "default/otto" in table else []

        await wait_for(otto_orders, lambda orders: "o-last" in orders, 60, "A to catch up")
        assert "rebuilding it from the changelog instead of reopening it" in log.read_text()
    finally:
        assert stop_worker(worker) == 0
    assert "default/nina" not in await read_table(settings)


async def test_an_existing_changelog_gets_the_tombstone_retention(
    isolated: dict[str, str],
) -> None:
    """A changelog topic created before ``delete.retention.ms`` was set (the broker's default,
    its own other settings): the worker's start sets it and keeps the others."""
    settings = settings_from({**isolated, "changelog_delete_retention_ms": "7200000"})
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    settings.changelog_topic,
                    1,
                    1,
                    topic_configs={"cleanup.policy": "compact", "segment.ms": "1000"},
                )
            ]
        )

        async def own_settings() -> dict[str, str]:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.changelog_topic)]
            )
            entries = described[0].resources[0][4]
            return {name: value for name, value, _ro, source, *_ in entries if source == 1}

        await wait_for(own_settings, lambda own: "segment.ms" in own, 30, "the new topic")
        assert await ensure_tombstone_retention(settings) == [settings.changelog_topic]
        assert await own_settings() == {
            "cleanup.policy": "compact",
            "segment.ms": "1000",
            "delete.retention.ms": "7200000",
        }
        assert await ensure_tombstone_retention(settings) == []  # set already
    finally:
        await admin.close()
