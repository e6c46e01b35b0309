"""Batches give the same result as one record at a time: the same state of every customer,
the same transitions in the same order, one table write per changed customer per batch, and
no table write before the batch's transitions are acknowledged."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import orjson
import pytest

from config.rules import load_rules
from models.scoring import Calibration
from models.segment_model import SegmentModel, bootstrap_calibration, current_metrics
from streams.clock import tick
from streams.codecs import decode_stored
from streams.dlq import SourceRecord
from streams.processor import Processor
from tests.adapters.fakes import Worker
from tests.synthetic import synthetic_year


def _records() -> list[SourceRecord]:
    events = synthetic_year(customers=60)
    return [
        SourceRecord(e["customer_id"].encode(), orjson.dumps(e), "orders", 0, offset)
        for offset, e in enumerate(events)
    ]


async def _feed(
    processor: Processor, records: list[SourceRecord], size: int, log: Any = None
) -> None:
    for number, start in enumerate(range(0, len(records), size)):
        chunk = records[start : start + size]
        activate = log.activate(number) if log is not None else (lambda _i: None)
        await processor.on_batch([(r, processor.on_order) for r in chunk], activate)
    await processor.drain()


async def _run(size: int) -> tuple[dict[bytes, Any], Worker]:
    worker = Worker()
    await _feed(worker.processor, _records(), size, worker.log)
    states = {k: decode_stored(v).state for k, v in worker.table.items()}
    return states, worker


@pytest.mark.parametrize("size", [7, 100, 5000])
async def test_batches_equal_one_record_at_a_time(size: int) -> None:
    one_states, one = await _run(1)
    states, worker = await _run(size)
    assert states == one_states
    assert worker.sent() == one.sent()  # same transitions, same ids, same order
    assert worker.cache.written == {k.decode(): s.revision for k, s in states.items()}
    # the figures Redis got, computed as the states were saved: those of the final states,
    # computed afresh
    rules = load_rules()
    assert worker.cache.figures == {
        k.decode(): current_metrics(s, SegmentModel(rules, bootstrap_calibration(rules, s.shop_id)))
        for k, s in states.items()
    }
    batches = -(-len(_records()) // size)
    assert max(worker.table.writes.values()) <= batches  # at most one write per customer per batch
    assert len(worker.table.calls) <= batches  # one table write per batch
    assert worker.cache.calls <= batches


async def test_the_table_gets_each_batch_as_rows_of_the_records_partitions() -> None:
    """Each batch's changed customers reach the table in one call, as (partition, key, value)
    rows: one row per customer, in the partition of the customer's records. The table ends as
    with one record at a time."""
    records = [
        SourceRecord(r.key, r.value, r.topic, zlib.crc32(r.key or b"") % 3, r.offset)
        for r in _records()
    ]
    partition_of = {r.key: r.partition for r in records}
    reference, worker = Worker(), Worker()
    await _feed(reference.processor, records, 1)
    await _feed(worker.processor, records, 50)
    assert worker.table and dict(worker.table) == dict(reference.table)
    assert len(worker.table.calls) == -(-len(records) // 50)  # one call per batch
    for rows in worker.table.calls:
        keys = [key for _partition, key, _value in rows]
        assert len(keys) == len(set(keys))
        for partition, key, _value in rows:
            assert partition == partition_of[key.split(b"/", 1)[1]], key


async def test_state_is_written_only_after_the_batch_transitions() -> None:
    """Every table write of a batch comes after the batch's transitions are sent: the k-th
    batch written comes after the k-th flush of the outbox."""
    _, worker = await _run(100)
    flushes = written = 0
    for kind, _ in worker.log:
        if kind == "flush":
            flushes += 1
        elif kind == "rows":
            written += 1
            assert written <= flushes
    batches = -(-len(_records()) // 100)
    assert worker.outbox.flushes == batches and written == batches


def _marker(name: str, done: list[str]) -> Any:
    async def mark() -> None:
        done.append(name)

    return mark


def _then(handler: Any, finished: asyncio.Event) -> Any:
    async def handle(record: SourceRecord) -> None:
        await handler(record)
        finished.set()

    return handle


async def test_the_next_batch_is_processed_while_the_last_one_waits_for_its_acks() -> None:
    """While the broker has not acknowledged a batch's transitions, its states are not
    written and its offsets not acknowledged; the next batch is processed meanwhile, on top of
    its states, and both end as one record at a time would. The transitions wait in the
    outbox until the end of their batch; a batch's transitions go out only once the last
    batch's are acknowledged."""
    records = _records()[:300]
    reference = Worker()
    await _feed(reference.processor, records, 1)
    expected = reference.sent()
    worker = Worker(manual=True)
    processor, table = worker.processor, worker.table
    done: list[str] = []
    processed = asyncio.Event()
    first = [(r, processor.on_order) for r in records[:150]]
    second = [(r, processor.on_order) for r in records[150:]]
    second[-1] = (second[-1][0], _then(processor.on_order, processed))
    # returns with the first batch processed, its writes waiting for the acks
    await asyncio.wait_for(processor.on_batch(first, lambda _i: None, _marker("first", done)), 10)
    sent_first = worker.sent()
    assert sent_first and sent_first == expected[: len(sent_first)]
    later = asyncio.create_task(
        processor.on_batch(second, lambda _i: None, _marker("second", done))
    )
    await asyncio.wait_for(processed.wait(), 10)  # the second batch, on top of the first
    assert not table and not done and not later.done()
    assert worker.sent() == sent_first
    worker.outbox.ack_all()
    await asyncio.wait_for(later, 10)  # the first batch's writes done, the second's started
    assert done == ["first"]
    assert worker.sent() == expected
    worker.outbox.ack_all()
    await processor.drain()
    assert done == ["first", "second"]
    assert table == reference.table


async def test_a_batch_whose_transitions_are_refused_is_reported_at_once_and_not_acknowledged() -> (
    None
):
    """The broker refuses a batch's transitions: nothing of it is written, its offsets are not
    acknowledged, and the failure is reported without waiting for another batch; the next
    call raises it too."""
    worker = Worker(manual=True)
    processor = worker.processor
    done: list[str] = []
    batch = [(r, processor.on_order) for r in _records()[:100]]
    await processor.on_batch(batch, lambda _i: None, _marker("batch", done))
    assert worker.outbox.pending
    refused = ConnectionError("refused")
    for future in worker.outbox.pending:
        future.set_exception(refused)
    async with asyncio.timeout(10):
        while not worker.failures:
            await asyncio.sleep(0)
    assert worker.failures == [refused] and not worker.table and not done
    with pytest.raises(ConnectionError):
        await processor.drain()


async def test_a_batch_is_acknowledged_only_once_its_changelog_records_are() -> None:
    worker = Worker()
    processor, table = worker.processor, worker.table
    table.gate = durable = asyncio.Event()
    done: list[str] = []
    batch = [(r, processor.on_order) for r in _records()[:100]]
    await processor.on_batch(batch, lambda _i: None, _marker("batch", done))
    async with asyncio.timeout(10):
        while not table:  # written to the table (the changelog records are on their way)
            await asyncio.sleep(0)
    for _ in range(20):  # the commit is waiting for the changelog: nothing is acknowledged
        await asyncio.sleep(0)
        assert not done
    durable.set()
    await asyncio.wait_for(processor.drain(), 10)
    assert done == ["batch"]


async def test_an_erasure_waits_for_the_batch_being_written() -> None:
    """An erasure of a customer whose last change is still being written (the previous
    batch, waiting for its acknowledgements) deletes them after that write: the deleted state
    is not written back by it."""
    worker = Worker(manual=True)
    processor, table, outbox = worker.processor, worker.table, worker.outbox
    records = _records()[:100]
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    customer = orjson.loads(records[0].value or b"")["customer_id"]
    erasure = {
        "type": "erasure_requested",
        "request_id": "r1",
        "customer_id": customer,
        "occurred_at": "2025-12-31T00:00:00+00:00",
    }
    record = SourceRecord(customer.encode(), orjson.dumps(erasure), "erasure", 0, 0)
    unacked = list(outbox.pending)  # the first batch's
    later = asyncio.create_task(
        processor.on_batch([(record, processor.on_erasure)], lambda _i: None)
    )
    await asyncio.sleep(0)  # the erasure's batch runs up to its first wait
    for future in outbox.pending:  # its own transitions, if it got that far, go through
        if future not in unacked:
            future.set_result(None)
    outbox.pending = unacked
    async with asyncio.timeout(10):
        while not later.done():
            outbox.ack_all()
            await asyncio.sleep(0)
    await later
    outbox.ack_all()
    await asyncio.wait_for(processor.drain(), 10)
    assert f"default/{customer}".encode() not in table
    assert len(table) > 0 and len(worker.receipts.sent) == 1


@pytest.mark.parametrize("kept", [0, 1])
async def test_a_restart_after_a_partly_written_batch_sends_what_one_run_sends(kept: int) -> None:
    """A worker dies while its last batch's changelog records are on their way: some reached
    the broker, some did not, and the batch's offsets were not committed. The next worker
    restores the table and replays the batch. Together they send exactly the transitions of
    one uninterrupted run (the same ids: nothing fires early or twice)."""
    _, one_run = await _run(1)
    records = _records()
    size = 400
    last = (len(records) // 2) // size * size  # the batch the worker dies in
    first = Worker()
    await _feed(first.processor, records[:last], size)
    before = dict(first.table)
    await _feed(first.processor, records[last : last + size], size)
    changed = sorted(k for k, v in first.table.items() if before.get(k) != v)
    arrived = {k: first.table[k] for k in changed[kept::2]}  # every other changed customer
    second = Worker()
    dict.update(second.table, {**before, **arrived})  # the changelog, as the restore reads it
    await second.processor.rebuild_index()
    await _feed(second.processor, records[last:], size)
    assert set(first.sent() + second.sent()) == set(one_run.sent())


async def test_a_replayed_reevaluation_writes_redis_even_when_the_table_has_its_effect() -> None:
    """Redis and the changelog are written at once: a crash can leave a re-evaluated state in
    the changelog and not in Redis. The replayed tick finds the state re-evaluated already and
    changes nothing, but still writes Redis."""
    worker = Worker()
    processor, table, cache = worker.processor, worker.table, worker.cache
    await _feed(processor, _records()[:200], 200)
    key = sorted(table)[0]
    cache.written.clear()  # the crash lost the Redis write
    record = SourceRecord(key, tick("reevaluate", key.decode(), None), "clock", 0, 0)
    writes = table.writes[key]
    await processor.on_batch([(record, processor.on_tick)], lambda _i: None)
    await processor.drain()
    assert cache.written == {key.decode(): decode_stored(table[key]).state.revision}
    assert table.writes[key] == writes  # nothing changed: no table write


async def test_a_batch_is_acknowledged_only_once_its_dead_letters_are() -> None:
    """Nothing is lost silently: a dead-lettered record's offset is acknowledged only once the
    broker has acknowledged the dead letter."""
    worker = Worker()
    worker.dead_letters.manual = True
    processor = worker.processor
    done: list[str] = []
    bad = SourceRecord(b"c1", b"{not json", "orders", 0, 7)
    await processor.on_batch([(bad, processor.on_order)], lambda _i: None, _marker("batch", done))
    assert len(worker.dead_letters.pending) == 1
    for _ in range(20):  # the dead letter is on its way: the batch is not acknowledged
        await asyncio.sleep(0)
        assert not done
    worker.dead_letters.pending[0].set_result(None)
    await asyncio.wait_for(processor.drain(), 10)
    assert done == ["batch"]


async def test_a_calibration_adopted_while_states_wait_to_be_written_re_evaluates_them() -> None:
    """Customers decided under the old calibration whose states are still in a batch waiting
    for its acknowledgements (not in the table yet) are queued for re-evaluation too."""
    worker = Worker(manual=True)
    processor, table = worker.processor, worker.table
    await processor.on_batch([(r, processor.on_order) for r in _records()[:150]], lambda _i: None)
    assert not table  # the batch's writes wait for its transitions' acknowledgements
    waiting = list(processor.checkpoint.staged_changes())
    assert waiting
    shop = waiting[0].state.shop_id
    old = processor.models.model_for(shop).calibration
    new = Calibration(shop_id=shop, version="test-2", method="quantile", cutoffs=old.cutoffs)
    assert await processor.set_calibration(new)
    expected = {(c.partition, c.state.key) for c in waiting if c.state.shop_id == shop}
    assert expected
    assert sorted(processor.clock.pending_reevaluation) == sorted(expected)  # each once
    worker.outbox.ack_all()
    await processor.drain()
    assert table  # written after all
