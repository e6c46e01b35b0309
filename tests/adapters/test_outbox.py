"""The outbox: every record in the partition the producer's default partitioner gives its key,
the records of a partition in the order they were added, split into as many producer batches
as they need."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.framework.outbox import Outbox


class Batch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.capacity or len(value) > 100:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class Producer:
    """aiokafka's batch API as the outbox uses it; a batch holds ``capacity`` records."""

    def __init__(self, partitions: dict[str, int], capacity: int) -> None:
        self.partitions = partitions
        self.capacity = capacity
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions[topic]))

    def create_batch(self) -> Batch:
        return Batch(self.capacity)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        return asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("capacity", [1, 3, 1000])
async def test_records_go_where_the_partitioner_puts_them_in_order(capacity: int) -> None:
    producer = Producer({"transitions": 4, "marketing.became_new": 3}, capacity)
    outbox = Outbox(lambda: producer)  # type: ignore[arg-type,return-value]
    added = []
    for i in range(40):
        topic = "transitions" if i % 3 else "marketing.became_new"
        record = (topic, f"c{i % 7}".encode(), f"v{i}".encode())
        outbox.add(*record)
        added.append(record)
    assert len(outbox) == 40
    futures = await outbox.send()
    assert len(outbox) == 0 and await outbox.send() == []
    assert len(futures) == len(producer.sent)
    partitioner = DefaultPartitioner()
    for topic, partition, records in producer.sent:
        assert 0 < len(records) <= capacity
        count = producer.partitions[topic]
        for key, _value in records:
            assert partition == partitioner(key, list(range(count)), list(range(count)))
    for topic in ("transitions", "marketing.became_new"):
        for partition in range(producer.partitions[topic]):
            got = [r for t, p, rs in producer.sent if (t, p) == (topic, partition) for r in rs]
            want = [
                (k, v)
                for t, k, v in added
                if t == topic
                and partitioner(k, list(range(producer.partitions[t])), []) == partition
            ]
            assert got == want


async def test_a_record_larger_than_a_batch_is_refused_loudly() -> None:
    producer = Producer({"transitions": 1}, 10)
    outbox = Outbox(lambda: producer)  # type: ignore[arg-type,return-value]
    outbox.add("transitions", b"c", b"v")
    outbox.add("transitions", b"c", b"x" * 200)
    with pytest.raises(ValueError, match="exceeds the producer's batch size"):
        await outbox.send()
