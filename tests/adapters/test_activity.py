"""The worker's activity records (what the segment insights add up): one per segment move,
with the transition's id, and one per order event that changed the customer's state, with the
segment the customer was in and the revenue it changes; none for a redelivery."""

from __future__ import annotations

from typing import Any

import orjson

from models.insights import order_activity_id
from streams.dlq import SourceRecord
from streams.insights.records import decode_activity
from tests.adapters.fakes import Worker
from tests.factories import cancelled, placed, refunded


async def run(events: list[dict[str, Any]]) -> Worker:
    worker = Worker(activity="activity")
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
    return [decode_activity(v) for topic, _k, v in worker.outbox.sent if topic == "activity"]


async def test_an_order_carries_the_move_it_causes() -> None:
    worker = await run([placed("c1", "o1", 0, total=4200)])
    (order,) = activity(worker)  # no record of its own for the move the order caused
    assert order.kind == "order" and order.order_type == "order_placed"
    assert order.id == order_activity_id("default", "c1", "order_placed", "o1")
    assert (order.segment_before, order.segment_after, order.amount, order.currency) == (
        None, "new", 4200, "EUR",
    )  # fmt: skip
    assert order.counted and order.attributed_segment == "new"
    assert [k for t, k, _v in worker.outbox.sent if t == "activity"] == [b"c1"]


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


async def test_without_an_activity_topic_nothing_is_published() -> None:
    worker = Worker()
    record = SourceRecord(b"c1", orjson.dumps(placed("c1", "o1", 0)), "orders", 0, 0)
    await worker.processor.on_batch([(record, worker.processor.on_order)], lambda _i: None)
    await worker.processor.drain()
    assert {topic for topic, _k, _v in worker.outbox.sent} == {"transitions"}
