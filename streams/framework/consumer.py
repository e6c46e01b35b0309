"""What the worker's consumer knows of a partition, and a metadata refresh for the command
line's consumers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


def input_end(app: Any, topic: str) -> Callable[[int], tuple[int, int | None] | None]:
    """(end offset, committed offset) of a partition of ``topic`` as the worker's consumer knows
    them (the end offset from its latest fetch): None while the partition is not assigned, is
    paused (``/pause``, or until the tables have recovered: what comes in is not seen) or the
    consumer has no end offset for it yet."""

    def position(partition: int) -> tuple[int, int | None] | None:
        consumer = app.consumer
        tp = TopicPartition(topic, partition)  # equal to Faust's TP of the same partition
        if tp not in consumer.assignment() or tp in consumer._paused_partitions:
            return None
        end = consumer.highwater(tp)
        if end is None:
            return None
        return end, consumer._committed_offset.get(tp)

    return position


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch the cluster's metadata now (a topic created a moment ago is not in the consumer's
    metadata until its next refresh)."""
    await consumer._client.force_metadata_update()


async def current_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions as the cluster's metadata lists them now (not the consumer's
    cached metadata, which may predate the topic)."""
    metadata = await consumer._client.fetch_all_metadata()
    return set(metadata.partitions_for_topic(topic) or ())
