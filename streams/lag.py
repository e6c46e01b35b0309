"""Consumer lag of the worker group, computed from the broker: log end offset minus committed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata

from config.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


async def group_lag(settings: Settings, topic: str | None = None) -> list[PartitionLag]:
    """Lag per partition of ``topic`` (default: the orders topic) for the worker group."""
    topic = topic or settings.orders_topic
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    await consumer.start()
    try:
        committed = await _committed(admin, settings.app_id)
        partitions = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(topic, p) for p in sorted(partitions.partitions_for_topic(topic) or ())
        ]
        end = await consumer.end_offsets(tps) if tps else {}
        return [
            PartitionLag(
                topic,
                tp.partition,
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
                end[tp],
            )
            for tp in tps
        ]
    finally:
        await consumer.stop()
        await admin.close()


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
