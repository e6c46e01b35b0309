"""What producers get wrong is counted, not lost: a cancellation or refund of an order the
customer's state does not hold waits for the order (events can arrive out of order) and is
counted, since a wrong order_id or shop_id would otherwise wait unnoticed for ever; an order
record in another partition than the default partitioner gives its key is counted too."""

from __future__ import annotations

import orjson
from aiokafka.partitioner import DefaultPartitioner

from streams.dlq import SourceRecord
from tests.adapters.fakes import Worker
from tests.factories import cancelled, placed, refunded


def _records(*events: dict) -> list[SourceRecord]:  # type: ignore[type-arg]
    return [
        SourceRecord(e["customer_id"].encode(), orjson.dumps(e), "orders", 0, offset)
        for offset, e in enumerate(events)
    ]


def _unmatched(processor) -> dict[str, float]:  # type: ignore[no-untyped-def]
    samples = processor.metrics.unmatched.collect()[0].samples
    return {s.labels["type"]: s.value for s in samples if s.name.endswith("_total")}


async def test_cancellations_and_refunds_of_orders_not_seen_are_counted_once() -> None:
    processor = Worker().processor
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
    events = processor.stats()["events"]
    assert events["unmatched_order_cancelled"] == 1
    assert events["unmatched_order_refunded"] == 1
    assert _unmatched(processor) == {"order_cancelled": 1.0, "order_refunded": 1.0}


async def test_order_records_outside_the_default_partitioners_partition_are_counted() -> None:
    """Every 64th order record is checked against the partition the producer's default
    partitioner (aiokafka's, as the Java client's) gives its key: the product's own consent and
    erasure requests are partitioned that way and must meet the customer's state."""
    processor = Worker(partitions=4).processor
    partitioner = DefaultPartitioner()
    customers = [f"c{i}" for i in range(12)]
    home = {c: partitioner(c.encode(), [0, 1, 2, 3], [0, 1, 2, 3]) for c in customers}
    records = []
    for n, customer in enumerate(customers):
        partition = home[customer] if n % 2 else (home[customer] + 1) % 4  # every other: wrong
        event = placed(customer, f"{customer}-o", 0)
        for offset in (64 * n, 64 * n + 1):  # only offsets that are multiples of 64 are checked
            records.append(
                SourceRecord(customer.encode(), orjson.dumps(event), "orders", partition, offset)
            )
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()
    assert processor.stats()["events"]["misrouted"] == 6
    assert processor.metrics.misrouted._value.get() == 6
