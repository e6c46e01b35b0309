"""The product where both servers are secured: a worker reads and writes Kafka over SASL_SSL
as a SCRAM user with ACLs, and writes Redis as an ACL user limited to the product's keys and
commands, over TLS where the Redis server has it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest

from streams.changelog import read_topic
from streams.cli.replay import publish
from streams.cli.secure_redis import SecureRedis
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import settings_from, wait_for
from tests.factories import placed

pytestmark = pytest.mark.integration


async def test_a_worker_on_a_secured_kafka_and_a_secured_redis(
    secured: dict[str, str], secure_redis: SecureRedis, tmp_path: Path
) -> None:
    tls = secure_redis.tls
    overrides = {
        **secured,
        "redis_url": secure_redis.url(tls=tls),
        "redis_prefix": f"segmenter:test-{uuid.uuid4().hex[:10]}:",  # the ACL user's keys
    }
    settings = settings_from(overrides)
    await ensure_topics(settings)
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        events = [placed("alice", "a-o1", 0, total=12_000), placed("alice", "a-o2", 10)]
        records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
        assert await publish(settings, iter(records)) == 2

        async def moves() -> list[tuple[str | None, str | None]]:
            found = [r async for r in read_topic(settings, settings.transitions_topic)]
            changes = [orjson.loads(r.value) for r in found]
            return [
                (t["from_segment"], t["to_segment"])
                for t in changes
                if t["type"] == "segment_changed"
            ]

        assert await wait_for(moves, lambda ms: len(ms) >= 2, 90, "transitions") == [
            (None, "new"),
            ("new", "potential_loyalist"),
        ]
        cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
        try:

            async def segment() -> str | None:
                return (await cache.read_customer("default", "alice")).get("segment")

            assert await wait_for(segment, lambda s: s == "potential_loyalist", 60, "redis")
            assert await cache.members("default", "potential_loyalist") == {"alice"}
        finally:
            await cache.close()
    finally:
        status = await asyncio.to_thread(stop_worker, process)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert status == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]
    for secret in (secured["kafka_sasl_password"], *secure_redis.passwords().values()):
        assert secret not in log
    print(f"secured end to end: Redis over {'TLS' if tls else 'a plain port (no TLS in server)'}")
