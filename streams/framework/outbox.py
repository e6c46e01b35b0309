"""Records for the producer, held back and sent together: one producer batch per topic
partition.

A record handed to the producer one by one costs a metadata check, a partitioner call, a
future and a debug-log call each; a worker sends several transitions per order (the segment
change and each tag change, to the transitions topic and to a marketing topic). ``Outbox``
collects them while a batch of orders is processed and hands them to aiokafka's
``send_batch``: one call and one future per topic partition.

Records of one key keep their order: they go to one partition, in the order they were added,
and aiokafka sends a partition's batches in the order they were submitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

_PARTITIONER = DefaultPartitioner()


class SentBatch(NamedTuple):
    """One producer batch: ``future`` resolves to the metadata of its first record (its
    offset is the batch's base offset) once the broker has acknowledged the batch."""

    topic: str
    partition: int
    records: int
    future: asyncio.Future[Any]


class Outbox:
    """Records waiting to be sent by one producer (``producer()`` gives it once started)."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer
        self._records: list[tuple[str, bytes, bytes | None, int | None]] = []
        self._partitions: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        """Drop the records held (their batch is processed again)."""
        self._records = []

    def add(
        self, topic: str, key: bytes, value: bytes | None, partition: int | None = None
    ) -> None:
        """Hold a record (``value`` None: a tombstone) for ``partition``, or, if None, for the
        partition the producer's default partitioner gives its key."""
        self._records.append((topic, key, value, partition))

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand every record held to the producer; the futures resolve when the broker has
        acknowledged them (or fail with the producer's error)."""
        return [sent.future for sent in await self.send_batches()]

    async def send_batches(self) -> list[SentBatch]:
        """``send``, telling which records each future stands for."""
        records, self._records = self._records, []
        if not records:
            return []
        producer = self._producer()
        by_partition: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {}
        chosen: dict[tuple[str, bytes], int] = {}  # a customer's records come in runs
        for topic, key, value, partition in records:
            if partition is None:
                partition = chosen.get((topic, key))
            if partition is None:
                partitions = self._partitions.get(topic)
                if partitions is None:
                    partitions = sorted(await producer.partitions_for(topic))
                    self._partitions[topic] = partitions
                # what producer.send picks for a keyed record (the default partitioner)
                partition = chosen[topic, key] = _PARTITIONER(key, partitions, partitions)
            by_partition.setdefault((topic, partition), []).append((key, value))
        sent = []
        for (topic, partition), items in by_partition.items():
            sent += await _send_batches(producer, topic, partition, items)
        return sent


async def _send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    items: list[tuple[bytes, bytes | None]],
) -> list[SentBatch]:
    sent: list[SentBatch] = []
    batch = producer.create_batch()
    for key, value in items:
        if batch.append(key=key, value=value, timestamp=None) is not None:
            continue
        count = batch.record_count()
        future = await producer.send_batch(batch, topic, partition=partition)
        sent.append(SentBatch(topic, partition, count, future))
        batch = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            size = len(value or b"") + len(key)
            raise ValueError(
                f"a record of {size} bytes for {topic} exceeds the producer's batch size"
            )
    if count := batch.record_count():
        future = await producer.send_batch(batch, topic, partition=partition)
        sent.append(SentBatch(topic, partition, count, future))
    return sent


def app_producer(app: Any) -> Callable[[], AIOKafkaProducer]:
    """The Faust app's aiokafka producer, once the app has started it."""
    return lambda: app.producer._ensure_producer()  # type: ignore[no-any-return]
