"""The Redis key layout: a bucket's keys share one Cluster slot; buckets are stable."""

from __future__ import annotations

from unittest.mock import MagicMock

from redis.crc import key_slot

from streams.redis_cache import RedisCache
from streams.redis_client import acl_rules
from streams.redis_layout import BUCKETS, bucket


def _layout(prefix: str = "segmenter:") -> RedisCache:
    return RedisCache(MagicMock(), prefix)  # key names only: no client call


def test_a_customers_hash_and_its_buckets_sets_share_one_slot() -> None:
    keys = _layout()
    for customer in ("alice", "bob", "c-1", "ünïcode", "a}b{c"):
        slot = key_slot(keys.customer_key("shop}1", customer).encode())
        sets = keys.segment_keys("shop}1", "new")
        assert key_slot(sets[bucket(customer)].encode()) == slot


def test_buckets_are_stable_and_spread_a_shop_over_slots() -> None:
    # CRC-32 of the id: the same in every process and release (a change moves every key)
    assert bucket("alice") == 663665735 % BUCKETS == 7
    spread = {bucket(f"c{i}") for i in range(1000)}
    assert spread == set(range(BUCKETS))
    slots = {key_slot(k.encode()) for k in _layout().segment_keys("default", "new")}
    assert len(slots) == BUCKETS


def test_every_key_starts_with_the_prefix_the_acl_user_is_limited_to() -> None:
    keys = _layout("tenant-a:")
    assert keys.customer_key("s", "c").startswith("tenant-a:")
    assert all(k.startswith("tenant-a:") for k in keys.segment_keys("s", "new"))
    assert keys.marker_key("app", 3) == "tenant-a:synced:b16:app:3"
    assert acl_rules("tenant-a:").startswith("resetkeys ~tenant-a:* resetchannels -@all +ping ")
