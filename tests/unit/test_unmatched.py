"""A cancellation or refund of an order the customer's state does not hold waits for the order
(events can arrive out of order), and is counted: a wrong order_id or shop_id would otherwise
wait unnoticed for ever."""

from __future__ import annotations

import orjson

from streams.dlq import SourceRecord
from tests.factories import cancelled, placed, refunded
from tests.unit.test_batches import _processor


def _records(*events: dict) -> list[SourceRecord]:  # type: ignore[type-arg]
    return [
        SourceRecord(e["customer_id"].encode(), orjson.dumps(e), "orders", 0, offset)
        for offset, e in enumerate(events)
    ]


def _unmatched(processor) -> dict[str, float]:  # type: ignore[no-untyped-def]
    samples = processor.metrics.unmatched.collect()[0].samples
    return {s.labels["type"]: s.value for s in samples if s.name.endswith("_total")}


async def test_cancellations_and_refunds_of_orders_not_seen_are_counted_once() -> None:
    processor, *_ = _processor()
    records = _records(
        cancelled("c1", "o1", 1),  # before its order: waits for it
        cancelled("c1", "o1", 1),  # redelivered: not counted again
        refunded("c1", "o2", 2, total=500),  # o2 never comes (a typo, say)
        placed("c1", "o1", 0),  # the cancelled order arrives: honoured, nothing unmatched
        placed("c1", "o3", 3),
        refunded("c1", "o3", 4, total=100),  # of an order the state holds: matched
    )
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()
    assert processor.counts["unmatched_order_cancelled"] == 1
    assert processor.counts["unmatched_order_refunded"] == 1
    assert _unmatched(processor) == {"order_cancelled": 1.0, "order_refunded": 1.0}
