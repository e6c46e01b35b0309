"""Batches give the same result as one record at a time: the same state of every customer,
the same transitions in the same order, one table write per changed customer per batch, and
no table write before the batch's transitions are acknowledged."""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from typing import Any

import orjson
import pytest

from config.rules import load_rules
from models.scoring import Calibration
from models.segment_model import SegmentModel, bootstrap_calibration, current_metrics
from streams.codecs import decode_stored
from streams.dlq import DeadLetters, SourceRecord
from streams.metrics import WorkerMetrics
from streams.orders import Outputs, Processor, _tick
from tests.synthetic import synthetic_year


class Log(list[tuple[str, Any]]):
    """What happened, in order; ``batches[i]``: the batch whose record was the current event
    (set by the batch's ``activate``) when entry ``i`` happened."""

    def __init__(self) -> None:
        super().__init__()
        self.batch: int | None = None
        self.batches: list[int | None] = []

    def append(self, entry: tuple[str, Any]) -> None:
        super().append(entry)
        self.batches.append(self.batch)

    def activate(self, batch: int) -> Any:
        return lambda _index: setattr(self, "batch", batch)


class Topic:
    """Records what is sent; deliveries are acknowledged at once, or (``manual``) only when
    ``ack_all`` is called. ``held``: records wait, like in an outbox, until ``dispatch``."""

    def __init__(self, log: list[tuple[str, Any]], manual: bool = False, held: bool = False):
        self.log = log
        self.manual = manual
        self.held: list[bytes] | None = [] if held else None
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, key: bytes, value: bytes, **_: Any) -> asyncio.Future[None] | None:
        if self.held is not None:
            self.held.append(value)
            return None
        return self._sent(value)

    async def dispatch(self) -> list[asyncio.Future[None]]:
        held, self.held = self.held or [], [] if self.held is not None else None
        return [self._sent(value) for value in held]

    def _sent(self, value: bytes) -> asyncio.Future[None]:
        self.log.append(("send", orjson.loads(value)["event_id"]))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.manual:
            self.pending.append(future)
        else:
            future.set_result(None)
        return future

    def ack_all(self) -> None:
        for future in self.pending:
            future.set_result(None)
        self.pending.clear()


class Table(dict[bytes, bytes]):
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.log = log
        self.writes: Counter[bytes] = Counter()

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append(("write", key))
        self.writes[key] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:  # like a Faust table: a tombstone, even if absent
        self.log.append(("delete", key))
        self.pop(key, None)


class Cache:
    pending = 0
    errors = 0

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.written: dict[str, int] = {}
        self.figures: dict[str, Any] = {}  # the last figures written per customer
        self.calls = 0

    async def write(self, items: Any) -> None:
        items = list(items)
        if items:
            self.calls += 1
            self.log.append(("redis", len(items)))
        for state, metrics in items:
            self.written[state.key] = max(self.written.get(state.key, 0), state.revision)
            self.figures[state.key] = metrics

    async def remove(self, shop_id: str, customer_id: str) -> bool:
        return True


def _processor(
    manual: bool = False, held: bool = False, write: Any = None
) -> tuple[Processor, Table, Topic, Cache, Log]:
    log = Log()
    transitions = Topic(log, manual, held)
    table = Table(log)
    cache = Cache(log)
    processor = Processor(
        table=table,
        erasures={},
        rules=load_rules(),
        calibrations={},
        outputs=Outputs(
            transitions=transitions,
            marketing={},
            backfill=True,
            marketing_skip_backfill=True,
            dispatch=transitions.dispatch,
        ),
        dead_letters=DeadLetters(Topic([])),
        cache=cache,  # type: ignore[arg-type]
        clock_mode="event",
        metrics=WorkerMetrics(),
        write=write,
    )
    return processor, table, transitions, cache, log


def _records() -> list[SourceRecord]:
    events = synthetic_year(customers=60)
    return [
        SourceRecord(e["customer_id"].encode(), orjson.dumps(e), "orders", 0, offset)
        for offset, e in enumerate(events)
    ]


async def _run(
    size: int, held: bool = False
) -> tuple[dict[bytes, Any], list[str], Table, Cache, Log]:
    processor, table, _transitions, cache, log = _processor(held=held)
    records = _records()
    for number, start in enumerate(range(0, len(records), size)):
        chunk = records[start : start + size]
        await processor.on_batch([(r, processor.on_order) for r in chunk], log.activate(number))
    await processor.drain()
    states = {k: decode_stored(v).state for k, v in table.items()}
    sent = [item for kind, item in log if kind == "send"]
    return states, sent, table, cache, log


@pytest.mark.parametrize("held", [False, True])
@pytest.mark.parametrize("size", [7, 100, 5000])
async def test_batches_equal_one_record_at_a_time(size: int, held: bool) -> None:
    one_states, one_sent, _, _, _ = await _run(1)
    states, sent, table, cache, _ = await _run(size, held)
    assert states == one_states
    assert sent == one_sent  # same transitions, same ids, same order
    assert cache.written == {k.decode(): s.revision for k, s in states.items()}
    # the figures Redis got, computed as the states were saved: those of the final states,
    # computed afresh
    rules = load_rules()
    assert cache.figures == {
        k.decode(): current_metrics(s, SegmentModel(rules, bootstrap_calibration(rules, s.shop_id)))
        for k, s in states.items()
    }
    batches = -(-len(_records()) // size)
    assert max(table.writes.values()) <= batches  # at most one write per customer per batch
    assert cache.calls <= batches


async def test_a_table_writer_gets_each_batch_as_rows_of_the_records_partitions() -> None:
    """With a table writer (the worker's: one RocksDB write batch per partition), each batch's
    changed customers reach it in one call, as (partition, key, value) rows: one row per
    customer, in the partition of the customer's records, after the batch's transitions. The
    table ends as with one assignment per key."""
    records = [
        SourceRecord(r.key, r.value, r.topic, zlib.crc32(r.key or b"") % 3, r.offset)
        for r in _records()
    ]
    partition_of = {r.key: r.partition for r in records}
    calls: list[list[tuple[int, bytes, bytes]]] = []

    def write(rows: list[tuple[int, bytes, bytes]]) -> None:
        calls.append(list(rows))
        log.append(("rows", len(rows)))
        table.update({key: value for _partition, key, value in rows})

    reference, reference_table, _, _, _ = _processor()
    processor, table, _, _, log = _processor(write=write)
    for start in range(0, len(records), 50):
        chunk = records[start : start + 50]
        for p in (reference, processor):
            await p.on_batch([(r, p.on_order) for r in chunk], lambda _i: None)
    for p in (reference, processor):
        await p.drain()
    assert table and dict(table) == dict(reference_table)
    assert len(calls) == -(-len(records) // 50)  # one call per batch
    for rows in calls:
        keys = [key for _partition, key, _value in rows]
        assert len(keys) == len(set(keys))
        for partition, key, _value in rows:
            assert partition == partition_of[key.split(b"/", 1)[1]], key
    kinds = [kind for kind, _ in log]
    assert kinds[0] == "send" and "write" not in kinds  # every write through the writer


async def test_state_is_written_only_after_the_batch_transitions() -> None:
    _, _, _, _, log = await _run(100)
    # within each batch: every send first, then the table writes (a batch's writes may
    # overlap the next batch's sends: each batch is told by its records' ``activate``)
    batches = -(-len(_records()) // 100)
    assert set(log.batches) == set(range(batches))
    for batch in range(batches):
        kinds = [kind for (kind, _), b in zip(log, log.batches, strict=True) if b == batch]
        assert "send" in kinds and "write" in kinds
        assert kinds.index("write") > max(i for i, kind in enumerate(kinds) if kind == "send")


def _marker(name: str, done: list[str]) -> Any:
    async def mark() -> None:
        done.append(name)

    return mark


def _then(handler: Any, finished: asyncio.Event) -> Any:
    async def handle(record: SourceRecord) -> None:
        await handler(record)
        finished.set()

    return handle


@pytest.mark.parametrize("held", [False, True])
async def test_the_next_batch_is_processed_while_the_last_one_waits_for_its_acks(
    held: bool,
) -> None:
    """While the broker has not acknowledged a batch's transitions, its states are not
    written and its offsets not acknowledged; the next batch is processed meanwhile, on top of
    its states, and both end as one record at a time would. ``held``: the transitions wait in
    an outbox until the end of their batch (the worker's topics); then a batch's transitions
    go out only once the last batch's are acknowledged."""
    records = _records()[:300]
    reference, _, _, _, _ = _processor()
    for record in records:
        await reference.on_batch([(record, reference.on_order)], lambda _i: None)
    await reference.drain()
    expected = [item for kind, item in reference.table.log if kind == "send"]  # type: ignore[attr-defined]
    processor, table, transitions, _, log = _processor(manual=True, held=held)
    done: list[str] = []
    processed = asyncio.Event()
    first = [(r, processor.on_order) for r in records[:150]]
    second = [(r, processor.on_order) for r in records[150:]]
    second[-1] = (second[-1][0], _then(processor.on_order, processed))
    # returns with the first batch processed, its writes waiting for the acks
    await asyncio.wait_for(processor.on_batch(first, lambda _i: None, _marker("first", done)), 10)
    sent_first = [item for kind, item in log if kind == "send"]
    assert sent_first and sent_first == expected[: len(sent_first)]
    later = asyncio.create_task(
        processor.on_batch(second, lambda _i: None, _marker("second", done))
    )
    await asyncio.wait_for(processed.wait(), 10)  # the second batch, on top of the first
    assert not table and not done and not later.done()
    sent = [item for kind, item in log if kind == "send"]
    assert sent == (sent_first if held else expected)
    transitions.ack_all()
    await asyncio.wait_for(later, 10)  # the first batch's writes done, the second's started
    assert done == ["first"]
    assert [item for kind, item in log if kind == "send"] == expected
    transitions.ack_all()
    await processor.drain()
    assert done == ["first", "second"]
    assert table == reference.table


async def test_a_batch_whose_transitions_are_refused_is_reported_at_once_and_not_acknowledged() -> (
    None
):
    """The broker refuses a batch's transitions: nothing of it is written, its offsets are not
    acknowledged, and the failure is reported without waiting for another batch; the next
    call raises it too."""
    failures: list[BaseException] = []
    processor, table, transitions, _, _ = _processor(manual=True, held=True)
    processor.on_write_failed = failures.append
    done: list[str] = []
    batch = [(r, processor.on_order) for r in _records()[:100]]
    await processor.on_batch(batch, lambda _i: None, _marker("batch", done))
    assert transitions.pending
    refused = ConnectionError("refused")
    for future in transitions.pending:
        future.set_exception(refused)
    async with asyncio.timeout(10):
        while not failures:
            await asyncio.sleep(0)
    assert failures == [refused] and not table and not done
    with pytest.raises(ConnectionError):
        await processor.drain()


async def test_a_batch_is_acknowledged_only_once_its_changelog_records_are() -> None:
    processor, table, _, _, _ = _processor()
    durable = asyncio.Event()

    async def table_durable() -> None:
        await durable.wait()

    processor.table_durable = table_durable
    done: list[str] = []
    batch = [(r, processor.on_order) for r in _records()[:100]]
    await processor.on_batch(batch, lambda _i: None, _marker("batch", done))
    async with asyncio.timeout(10):
        while not table:  # written to the table (the changelog records are on their way)
            await asyncio.sleep(0)
    for _ in range(20):  # the writer is waiting for the changelog: nothing is acknowledged
        await asyncio.sleep(0)
        assert not done
    durable.set()
    await asyncio.wait_for(processor.drain(), 10)
    assert done == ["batch"]


async def test_an_erasure_waits_for_the_batch_being_written() -> None:
    """An erasure of a customer whose last change is still being written (the previous
    batch, waiting for its acknowledgements) deletes them after that write: the deleted state
    is not written back by it."""

    receipts: list[bytes] = []

    class Receipts:
        async def send(self, key: bytes, value: bytes) -> None:
            receipts.append(value)

    processor, table, transitions, _, _ = _processor(manual=True, held=True)
    object.__setattr__(processor.outputs, "receipts", Receipts())
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
    unacked = list(transitions.pending)  # the first batch's
    later = asyncio.create_task(
        processor.on_batch([(record, processor.on_erasure)], lambda _i: None)
    )
    await asyncio.sleep(0)  # the erasure's batch runs up to its first wait
    for future in transitions.pending:  # its own transitions, if it got that far, go through
        if future not in unacked:
            future.set_result(None)
    transitions.pending = unacked
    async with asyncio.timeout(10):
        while not later.done():
            transitions.ack_all()
            await asyncio.sleep(0)
    await later
    transitions.ack_all()
    await asyncio.wait_for(processor.drain(), 10)
    assert f"default/{customer}".encode() not in table
    assert len(table) > 0 and len(receipts) == 1


@pytest.mark.parametrize("kept", [0, 1])
async def test_a_restart_after_a_partly_written_batch_sends_what_one_run_sends(kept: int) -> None:
    """A worker dies while its last batch's changelog records are on their way: some reached
    the broker, some did not, and the batch's offsets were not committed. The next worker
    restores the table and replays the batch. Together they send exactly the transitions of
    one uninterrupted run (the same ids: nothing fires early or twice)."""
    _, one_run, _, _, _ = await _run(1)
    records = _records()
    size = 400
    last = (len(records) // 2) // size * size  # the batch the worker dies in

    async def feed(processor: Processor, part: list[SourceRecord]) -> None:
        for start in range(0, len(part), size):
            batch = part[start : start + size]
            await processor.on_batch([(r, processor.on_order) for r in batch], lambda _i: None)
        await processor.drain()

    first, table, _, _, first_log = _processor()
    await feed(first, records[:last])
    before = dict(table)
    await feed(first, records[last : last + size])
    changed = sorted(k for k, v in table.items() if before.get(k) != v)
    arrived = {k: table[k] for k in changed[kept::2]}  # every other changed customer
    second, restored, _, _, second_log = _processor()
    dict.update(restored, {**before, **arrived})  # the changelog, as the restore reads it
    await second.rebuild_index()
    await feed(second, records[last:])
    sent = {item for kind, item in first_log + second_log if kind == "send"}
    assert sent == set(one_run)


async def test_a_replayed_reevaluation_writes_redis_even_when_the_table_has_its_effect() -> None:
    """Redis and the changelog are written at once: a crash can leave a re-evaluated state in
    the changelog and not in Redis. The replayed tick finds the state re-evaluated already and
    changes nothing, but still writes Redis."""
    processor, table, _, cache, _ = _processor()
    records = _records()[:200]
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()
    key = sorted(table)[0]
    cache.written.clear()  # the crash lost the Redis write
    tick = SourceRecord(key, _tick("reevaluate", key.decode(), None), "clock", 0, 0)
    writes = table.writes[key]
    await processor.on_batch([(tick, processor.on_tick)], lambda _i: None)
    await processor.drain()
    assert cache.written == {key.decode(): decode_stored(table[key]).state.revision}
    assert table.writes[key] == writes  # nothing changed: no table write


async def test_a_batch_is_acknowledged_only_once_its_dead_letters_are() -> None:
    """Nothing is lost silently: a dead-lettered record's offset is acknowledged only once the
    broker has acknowledged the dead letter."""

    class DeadLetterTopic:
        def __init__(self) -> None:
            self.pending: list[asyncio.Future[None]] = []

        async def send(self, key: Any, value: Any, headers: Any) -> asyncio.Future[None]:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.pending.append(future)
            return future

    processor, _, _, _, _ = _processor()
    topic = DeadLetterTopic()
    processor.dead_letters = DeadLetters(topic)
    done: list[str] = []
    bad = SourceRecord(b"c1", b"{not json", "orders", 0, 7)
    await processor.on_batch([(bad, processor.on_order)], lambda _i: None, _marker("batch", done))
    assert len(topic.pending) == 1
    for _ in range(20):  # the dead letter is on its way: the batch is not acknowledged
        await asyncio.sleep(0)
        assert not done
    topic.pending[0].set_result(None)
    await asyncio.wait_for(processor.drain(), 10)
    assert done == ["batch"]


async def test_a_calibration_adopted_while_states_wait_to_be_written_re_evaluates_them() -> None:
    """Customers decided under the old calibration whose states are still in a batch waiting
    for its acknowledgements (not in the table yet) are queued for re-evaluation too."""
    processor, table, transitions, _, _ = _processor(manual=True)
    records = _records()[:150]
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    assert not table  # the batch's writes wait for its transitions' acknowledgements
    waiting = processor._writing
    assert waiting is not None
    shop = next(iter(waiting.changes.values())).state.shop_id
    old = processor.model_for(shop).calibration
    new = Calibration(shop_id=shop, version="test-2", method="quantile", cutoffs=old.cutoffs)
    assert await processor.set_calibration(new)
    expected = {(c.partition, k) for k, c in waiting.changes.items() if c.state.shop_id == shop}
    assert expected
    assert sorted(processor.pending_reevaluation) == sorted(expected)  # each once
    transitions.ack_all()
    await processor.drain()
    assert table  # written after all
