"""Erasure requests sent to every partition, replayed erasures, Redis removals that wait for
Redis across a crash, and partition stores too old to be reopened."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from faust.stores.rocksdb import Store as RocksDBStore
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.cli.privacy_requests import combine
from streams.dlq import DeadLetters, SourceRecord
from streams.framework.store_age import discard_stale_stores, store_age
from streams.redis_cache import RedisCache
from streams.redis_layout import bucket
from streams.removals import PREFIX, RemovalJournal
from tests.adapters.fakes import Store, Topic, Worker

NOW = "2026-01-10T00:00:00+00:00"


def _order(customer: str, order_id: str, partition: int, offset: int) -> SourceRecord:
    event = {
        "type": "order_placed",
        "order_id": order_id,
        "customer_id": customer,
        "occurred_at": NOW,
        "currency": "EUR",
        "total": 5_000,
    }
    return SourceRecord(customer.encode(), orjson.dumps(event), "orders", partition, offset)


def _erasure(customer: str, partition: int, offset: int) -> SourceRecord:
    event = {
        "type": "erasure_requested",
        "request_id": "r-1",
        "customer_id": customer,
        "occurred_at": NOW,
    }
    return SourceRecord(customer.encode(), orjson.dumps(event), "erasure", partition, offset)


async def _run(worker: Worker, records: list[SourceRecord], handler: str) -> None:
    processor = worker.processor
    await processor.on_batch([(r, getattr(processor, handler)) for r in records], lambda _i: None)
    await processor.drain()


def _receipts(worker: Worker) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _key, value in worker.receipts.sent]


async def test_a_request_sent_to_every_partition_finds_the_state_where_the_orders_went() -> None:
    """The webshop's producer put the customer's orders in partition 2 (not where murmur2
    would): of the four copies of the request, partition 2's deletes the state, once; every
    partition gets a tombstone and a receipt for its part."""
    worker = Worker(partitions=4)
    await _run(worker, [_order("c-7", "o1", 2, 0), _order("c-7", "o2", 2, 1)], "on_order")
    assert b"default/c-7" in worker.table
    before = len(worker.outbox.log)

    await _run(worker, [_erasure("c-7", p, 0) for p in range(4)], "on_erasure")

    assert b"default/c-7" not in worker.table
    receipts = _receipts(worker)
    assert [(r["partition"], r["state_deleted"]) for r in receipts] == [
        (0, False),
        (1, False),
        (2, True),
        (3, False),
    ]
    assert all(r["cache_deleted"] for r in receipts)
    tombstones = [e for kind, e in worker.log if kind == "tombstone"]
    assert tombstones == [(p, b"default/c-7") for p in range(4)]
    removals = [e for kind, e in worker.log if kind == "remove"]
    assert removals == [("default", "c-7", p) for p in range(4)]
    # the last transitions (cause erasure) once, as the request to partition 2 alone sends them
    alone = Worker(partitions=4)
    await _run(alone, [_order("c-7", "o1", 2, 0), _order("c-7", "o2", 2, 1)], "on_order")
    start = len(alone.outbox.log)
    await _run(alone, [_erasure("c-7", 2, 0)], "on_erasure")
    sent = [e for kind, e in worker.outbox.log[before:] if kind == "send"]
    assert sent == [e for kind, e in alone.outbox.log[start:] if kind == "send"]
    assert sent
    assert worker.processor.customers == 0


async def test_a_replayed_erasure_writes_its_tombstone_again() -> None:
    """Replayed after the state was deleted locally (its tombstone may never have reached the
    broker: a clean stop while the broker was away), the erasure still sends a tombstone."""
    worker = Worker(partitions=1)
    await _run(worker, [_order("c-8", "o1", 0, 0)], "on_order")
    await _run(worker, [_erasure("c-8", 0, 0)], "on_erasure")
    await _run(worker, [_erasure("c-8", 0, 0)], "on_erasure")  # replayed
    tombstones = [e for kind, e in worker.log if kind == "tombstone"]
    assert tombstones == [(0, b"default/c-8"), (0, b"default/c-8")]
    assert [r["state_deleted"] for r in _receipts(worker)] == [True, False]


class _Script:
    def __init__(self, redis: _FlakyRedis) -> None:
        self.redis = redis

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self.redis.down:
            raise RedisConnectionError("Connection refused")
        self.redis.removed.append(keys[0])
        return None


class _FlakyRedis:
    """Enough of a Redis client for removals: the removal script fails while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.removed: list[str] = []

    def register_script(self, _script: str) -> _Script:
        return _Script(self)


async def test_a_removal_that_failed_is_stored_and_survives_a_crash() -> None:
    table = Store([])
    redis = _FlakyRedis()
    cache = RedisCache(redis, "p:")
    cache.journal = RemovalJournal(table)
    assert await cache.remove("shop", "c-9", 3) is False
    key = PREFIX + b"shop/c-9"
    assert orjson.loads(table[key]) == [3, "shop", "c-9"]

    # the worker dies; the next one reads the erasures table back
    restarted = RedisCache(redis, "p:")
    restarted.journal = RemovalJournal(table)
    assert restarted.restore_removals() == 1
    assert restarted.pending == 1
    assert await restarted.flush_pending() == 1  # Redis still away: still pending, still stored
    assert key in table

    redis.down = False
    assert await restarted.flush_pending() == 0
    assert redis.removed == [f"p:{{shop:{bucket('c-9')}}}:customer:c-9"]
    assert key not in table  # its entry deleted (a tombstone on partition 3)
    assert ("tombstone", (3, key)) in table.log


class _Options:
    def open(self, path: Path, read_only: bool) -> str:
        return f"opened {path.name}"


class _Store:
    """What the RocksDB store's opener uses of itself."""

    read_only = False
    rocksdb_options = _Options()

    def __init__(self, root: Path) -> None:
        self.root = root

    def partition_path(self, partition: int) -> Path:
        return self.root / f"customers-{partition}.db"


@pytest.mark.parametrize(("hours_unused", "kept"), [(1, True), (13, False)])
def test_a_partition_store_unused_for_half_the_tombstone_retention_is_rebuilt(
    tmp_path: Path, hours_unused: int, kept: bool
) -> None:
    path = tmp_path / "customers-0.db"
    path.mkdir()
    written = path / "000004.log"
    written.write_bytes(b"state")
    then = time.time() - hours_unused * 3600
    os.utime(written, (then, then))
    assert store_age(path) == pytest.approx(hours_unused * 3600, abs=60)

    discard_stale_stores(86_400_000)  # a day: stores unused for 12 hours or more go
    assert RocksDBStore._open_for_partition(_Store(tmp_path), 0) == "opened customers-0.db"
    assert written.exists() is kept


async def test_dead_letter_logs_leave_the_raw_ids_out_when_pseudonymisation_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reason's message quotes the record's raw ids (the key, the customer id): with
    pseudonymisation on, it goes to the dead letter's headers only, not to the log."""
    record = _order("alice-raw-id", "o1", 0, 5)
    message = "record key 'alice-raw-id' differs from customer_id 'alice-raw-idx'"
    topic = Topic()
    with caplog.at_level(logging.WARNING):
        await DeadLetters(topic, log_messages=False).send(record, "key_mismatch", message)
        assert "alice-raw-id" not in caplog.text
        assert "dead-lettered orders[0]@5: key_mismatch" in caplog.text
        await DeadLetters(topic).send(record, "key_mismatch", message)
    assert "alice-raw-id" in caplog.text  # without pseudonymisation the log says which
    assert len(topic.sent) == 2


def test_the_receipts_of_every_partition_combine_into_one() -> None:
    def receipt(partition: int, deleted: bool, cache: bool) -> dict[str, Any]:
        return {
            "type": "erasure_completed",
            "request_id": "r-1",
            "shop_id": "default",
            "requested_at": "2026-01-10T00:00:00+00:00",
            "completed_at": f"2026-01-10T00:00:0{partition}+00:00",
            "state_deleted": deleted,
            "cache_deleted": cache,
            "cache_deletion_pending": not cache,
            "partition": partition,
        }

    found = combine([receipt(0, False, True), receipt(2, True, False), receipt(1, False, True)], 3)
    assert {k: found[k] for k in found if k not in ("type", "request_id", "shop_id")} == {
        "requested_at": "2026-01-10T00:00:00+00:00",
        "completed_at": "2026-01-10T00:00:02+00:00",
        "state_deleted": True,
        "cache_deleted": False,
        "cache_deletion_pending": True,
        "partitions": 3,
        "state_found_on": [2],
    }
    nothing = combine([receipt(p, False, True) for p in range(3)], 3)
    assert (nothing["state_deleted"], nothing["state_found_on"]) == (False, [])


async def test_an_erasure_whose_writes_are_refused_stops_the_worker() -> None:
    """The insight tables' changelog refused while an erasure writes the batch so far: the
    worker stops (as for a failed commit) instead of processing the batch again in place,
    which would find the insights already in the local tables and never send them."""
    worker = Worker(insights=True)
    await _run(worker, [_order("c1", "o1", 0, 0)], "on_order")
    insights = worker.insights
    assert insights is not None
    refused = ConnectionError("the broker refused the insight tables' changelog records")

    calls: list[int] = []

    async def durable() -> None:  # refused once (a real worker exits there and then)
        calls.append(1)
        if len(calls) == 1:
            raise refused

    insights.durable = durable  # type: ignore[method-assign]
    await _run(worker, [_erasure("c1", 0, 0)], "on_erasure")
    assert worker.failures == [refused]
