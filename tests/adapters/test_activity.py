"""The worker's activity records (what the segment insights add up, in the batch's commit):
one per segment move, with the transition's id, and one per order event that changed the
customer's state, with the segment the customer was in and the revenue it changes; none for a
redelivery. They are added up after the batch's transitions are acknowledged and before the
customers' states are written."""

from __future__ import annotations

from typing import Any

import orjson

from models.insights import order_activity_id
from streams.dlq import SourceRecord
from tests.adapters.fakes import Worker
from tests.factories import cancelled, placed, refunded


async def run(events: list[dict[str, Any]]) -> Worker:
    worker = Worker(insights=True)
    processor = worker.processor
    records = [
        SourceRecord(e["customer_id"].encode(), orjson.dumps(e), "orders", 0, offset)
        for offset, e in enumerate(events)
    ]
    for record in records:  # one batch each: the order of the records is the order of events
        await processor.on_batch([(record, processor.on_order)], lambda _i: None)
    await processor.drain()
    return worker


def activity(worker: Worker) -> list[Any]:
    assert worker.insights is not None
    return [record for _partition, record in worker.insights.added]


async def test_an_order_carries_the_move_it_causes() -> None:
    worker = await run([placed("c1", "o1", 0, total=4200)])
    (order,) = activity(worker)  # no record of its own for the move the order caused
    assert order.kind == "order" and order.order_type == "order_placed"
    assert order.id == order_activity_id("default", "c1", "order_placed", "o1")
    assert (order.segment_before, order.segment_after, order.amount, order.currency) == (
        None, "new", 4200, "EUR",
    )  # fmt: skip
    assert order.counted and order.attributed_segment == "new"
    assert worker.insights is not None and worker.insights.added[0][0] == 0  # the partition


async def test_a_move_that_time_causes_has_a_record_with_the_transition_s_id() -> None:
    # c2's order, 200 days on, moves the event clock past c1's inactivity due time
    worker = await run([placed("c1", "o1", 0), placed("c2", "o2", 200)])
    moves = [r for r in activity(worker) if r.kind == "move"]
    transitions = [
        orjson.loads(v or b"")
        for topic, _k, v in worker.outbox.sent
        if topic == "transitions" and b'"time"' in (v or b"") and b"segment_changed" in (v or b"")
    ]
    assert [(m.customer_id, m.from_segment, m.to_segment, m.cause) for m in moves] == [
        ("c1", "new", "inactive", "time")
    ]
    assert moves[0].id == transitions[0]["event_id"]


async def test_a_redelivered_order_publishes_nothing_more() -> None:
    once = activity(await run([placed("c1", "o1", 0)]))
    twice = activity(await run([placed("c1", "o1", 0), placed("c1", "o1", 0)]))
    assert twice == once


async def test_a_second_order_counts_for_the_segment_it_was_placed_in() -> None:
    records = activity(await run([placed("c1", "o1", 0), placed("c1", "o2", 10, total=7000)]))
    second = next(r for r in records if r.kind == "order" and r.order_id == "o2")
    assert second.segment_before == "new"
    assert second.amount == 7000


async def test_cancellations_and_refunds_take_back_what_the_order_brought() -> None:
    records = activity(
        await run(
            [
                placed("c1", "o1", 0, total=5000),
                placed("c1", "o2", 5, total=3000),
                refunded("c1", "o1", 6, total=1000, refund_id="r1"),
                cancelled("c1", "o2", 7),
            ]
        )
    )
    orders = [(r.order_type, r.order_id, r.amount) for r in records if r.kind == "order"]
    assert orders == [
        ("order_placed", "o1", 5000),
        ("order_placed", "o2", 3000),
        ("order_refunded", "o1", 1000),
        ("order_cancelled", "o2", 3000),
    ]
    refund = next(r for r in records if r.order_type == "order_refunded")
    assert refund.id == order_activity_id("default", "c1", "order_refunded", "o1/r1")


async def test_an_order_cancelled_before_it_arrived_brings_nothing() -> None:
    records = activity(await run([cancelled("c1", "o1", 1), placed("c1", "o1", 0)]))
    assert [(r.order_type, r.amount, r.counted) for r in records] == [
        ("order_cancelled", 0, True),
        ("order_placed", 0, False),
    ]


async def test_without_insights_nothing_is_added_up_or_published() -> None:
    worker = Worker()
    record = SourceRecord(b"c1", orjson.dumps(placed("c1", "o1", 0)), "orders", 0, 0)
    await worker.processor.on_batch([(record, worker.processor.on_order)], lambda _i: None)
    await worker.processor.drain()
    assert {topic for topic, _k, _v in worker.outbox.sent} == {"transitions"}
    assert worker.insights is None and worker.processor.checkpoint.insights is None


async def test_a_batch_is_added_up_after_its_transitions_and_before_its_states() -> None:
    worker = Worker(insights=True)
    records = [
        SourceRecord(e["customer_id"].encode(), orjson.dumps(e), "orders", 3, offset)
        for offset, e in enumerate([placed("c1", "o1", 0), placed("c2", "o2", 1)])
    ]
    processor = worker.processor
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()
    steps = [kind for kind, _ in worker.log if kind in ("flush", "insights", "rows")]
    assert steps == ["flush", "insights", "rows"]  # one of each for the batch
    assert worker.log.index(("insights durable", 2)) < worker.log.index(("rows", 2))
    assert [(p, r.customer_id) for p, r in worker.insights.added] == [(3, "c1"), (3, "c2")]
    totals = worker.insights.totals
    assert totals[b"3\x1fdefault\x1fn"] == b"2"  # both counted, in partition 3's row


async def test_a_batch_processed_again_adds_up_once() -> None:
    """A batch whose commit failed after the insights were written (the worker stops and the
    batch is read again): the same records add nothing more."""
    worker = Worker(insights=True)
    events = [placed("c1", "o1", 0, total=4200), placed("c1", "o2", 3, total=1000)]
    records = [
        SourceRecord(b"c1", orjson.dumps(e), "orders", 0, offset) for offset, e in enumerate(events)
    ]
    processor = worker.processor
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()
    assert worker.insights is not None
    first = dict(worker.insights.totals)
    worker.table.clear()  # the states never reached the table: the batch comes again
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()
    assert len(worker.insights.added) == 4  # handed over twice ...
    assert dict(worker.insights.totals) == first  # ... counted once


async def test_an_erasure_is_added_up_before_the_state_is_deleted() -> None:
    worker = Worker(insights=True)
    processor = worker.processor
    order = SourceRecord(b"c1", orjson.dumps(placed("c1", "o1", 0)), "orders", 0, 0)
    await processor.on_batch([(order, processor.on_order)], lambda _i: None)
    erasure = {
        "type": "erasure_requested",
        "customer_id": "c1",
        "request_id": "req-1",
        "occurred_at": "2025-02-01T00:00:00+00:00",
    }
    record = SourceRecord(b"c1", orjson.dumps(erasure), "erasure", 0, 0)
    await processor.on_batch([(record, processor.on_erasure)], lambda _i: None)
    await processor.drain()
    assert worker.insights is not None
    (_, move) = worker.insights.added[-1]
    assert (move.kind, move.from_segment, move.to_segment, move.cause) == (
        "move", "new", None, "erasure",
    )  # fmt: skip
    durable = max(i for i, (kind, _) in enumerate(worker.log) if kind == "insights durable")
    assert durable < worker.log.index(("tombstone", (0, b"default/c1")))
    assert b"default\x1fc1" not in worker.insights.customers  # no insight state left
