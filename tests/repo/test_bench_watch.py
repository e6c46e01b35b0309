"""The latency benchmark recognises a customer's hash by its keyspace channel, in the key
layout the worker writes (a layout change once left it waiting for writes it never saw)."""

from __future__ import annotations

from redis.asyncio import Redis

from bench.run import customer_of
from streams.redis_cache import RedisCache


def test_the_watcher_reads_the_customer_of_the_workers_hash_key() -> None:
    cache = RedisCache(Redis(), "bench-1a2b3c4d-live:")  # a client never connected
    key = cache.customer_key("default", "lat-1a2b3c4d-17")
    kind, _, customer = customer_of(f"__keyspace@0__:{key}")
    assert (kind, customer) == ("customer", "lat-1a2b3c4d-17")
    segment_set = cache.segment_keys("default", "new")[0]
    assert customer_of(f"__keyspace@0__:{segment_set}")[0] == "segment"
