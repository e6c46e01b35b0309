"""Consumer lag of the worker group, computed from the broker: log end offset minus committed
offset (what ``kafka-consumer-groups --describe`` shows), and the age of the oldest unprocessed
record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata

from config.settings import Settings
from streams.clients import kafka_options, started
from streams.framework.consumer import current_partitions


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int
    # Seconds since the oldest unprocessed record was written (None: not measured or no lag).
    age_seconds: float | None = None

    @property
    def lag(self) -> int | None:
        """None while the group has committed nothing for the partition (Kafka shows ``-``)."""
        return None if self.committed is None else self.end - self.committed


class LagProbe:
    """Long-lived admin and consumer clients for measuring the group's lag repeatedly."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._group = settings.app_id
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect (once; again after a failed start)."""
        if self._admin is not None and self._consumer is not None:
            return
        options = kafka_options(self._settings)
        admin = await started(AIOKafkaAdminClient(**options))
        try:
            consumer = await started(AIOKafkaConsumer(**options, enable_auto_commit=False))
        except Exception:
            await admin.close()
            raise
        self._admin, self._consumer = admin, consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._consumer = None

    async def __aenter__(self) -> LagProbe:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        assert self._consumer is not None
        partitions = await current_partitions(self._consumer, topic)
        return [TopicPartition(topic, p) for p in sorted(partitions)]

    async def measure(
        self, tps: Iterable[TopicPartition], with_age: bool = False
    ) -> list[PartitionLag]:
        assert self._admin is not None and self._consumer is not None
        tps = sorted(tps)
        if not tps:
            return []
        committed = await _committed(self._admin, self._group)
        end = await self._consumer.end_offsets(tps)
        result = []
        for tp in tps:
            offset = committed.get(tp)
            done = offset.offset if offset is not None and offset.offset >= 0 else None
            age = None
            if with_age and done is not None and end[tp] > done:
                age = await self._age_of(tp, done)
            result.append(PartitionLag(tp.topic, tp.partition, done, end[tp], age))
        return result

    async def _age_of(self, tp: TopicPartition, offset: int) -> float | None:
        """Seconds since the record at ``offset`` was written (its broker timestamp)."""
        assert self._consumer is not None
        self._consumer.assign([tp])
        self._consumer.seek(tp, offset)
        batches = await self._consumer.getmany(tp, timeout_ms=2000, max_records=1)
        records = batches.get(tp, [])
        if not records:
            return None
        return max(time.time() - records[0].timestamp / 1000, 0.0)


async def group_lag(settings: Settings, topic: str | None = None) -> list[PartitionLag]:
    """Lag per partition of ``topic`` (default: the orders topic) for the worker group."""
    async with LagProbe(settings) as probe:
        return await probe.measure(await probe.partitions(topic or settings.orders_topic))


async def _committed(
    admin: AIOKafkaAdminClient, group_id: str
) -> dict[TopicPartition, OffsetAndMetadata]:
    """Committed offsets of the group; none while its coordinator is still being elected."""
    for _ in range(10):
        try:
            return await admin.list_consumer_group_offsets(group_id)
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
            await asyncio.sleep(0.3)
    return {}
