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


async def test_an_order_and_the_move_it_causes() -> None:
    worker = await run([placed("c1", "o1", 0, total=4200)])
    order, move = activity(worker)
    assert order.kind == "order" and order.order_type == "order_placed"
    assert order.id == order_activity_id("default", "c1", "order_placed", "o1")
    assert (order.segment_before, order.segment_after, order.amount, order.currency) == (
        None, "new", 4200, "EUR",
    )  # fmt: skip
    assert order.attributed_segment == "new"
    transitions = [
        orjson.loads(v or b"")
        for topic, _k, v in worker.outbox.sent
        if topic == "transitions" and b"segment_changed" in (v or b"")
    ]
    assert move.kind == "move" and move.id == transitions[0]["event_id"]
    assert (move.from_segment, move.to_segment, move.cause) == (None, "new", "order_placed")
    assert [k for t, k, _v in worker.outbox.sent if t == "activity"] == [b"c1", b"c1"]


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
    assert [r for r in records if r.kind == "order"] == []


async def test_without_an_activity_topic_nothing_is_published() -> None:
    worker = Worker()
    record = SourceRecord(b"c1", orjson.dumps(placed("c1", "o1", 0)), "orders", 0, 0)
    await worker.processor.on_batch([(record, worker.processor.on_order)], lambda _i: None)
    await worker.processor.drain()
    assert {topic for topic, _k, _v in worker.outbox.sent} == {"transitions"}
