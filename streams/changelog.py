"""Reading topics from the beginning to their current end, and the customer table from its
compacted changelog topic.

The changelog is the authoritative copy of the table, readable without a running worker: the
latest record per key wins, and a tombstone (no value) removes the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from config.settings import Settings
from streams.clients import kafka_options, started
from streams.codecs import StoredState, decode_stored
from streams.framework.consumer import refresh_metadata

Progress = Callable[[int, int], None]


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, asking the broker again if the consumer's metadata does not
    list the topic yet (none: the topic does not exist)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await refresh_metadata(consumer)
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def read_topic(
    settings: Settings, topic: str, progress: Progress | None = None
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end offsets at the time of the call."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await started(consumer)
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - begin[tp] for tp in tps)
        remaining = {tp for tp in tps if end[tp] > begin[tp]}
        done = 0
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp]:
                        continue
                    done += 1
                    yield record
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            if progress is not None:
                progress(done, total)
    finally:
        await consumer.stop()


async def read_latest(settings: Settings, progress: Progress | None = None) -> dict[bytes, bytes]:
    """Every customer's stored state as the table's changelog holds it (encoded), keyed by
    ``<shop>/<customer>``; an erased customer's tombstone leaves the key out."""
    latest: dict[bytes, bytes | None] = {}
    async for record in read_topic(settings, settings.changelog_topic, progress):
        if record.key is not None:
            latest[record.key] = record.value
    return {key: value for key, value in latest.items() if value is not None}


async def read_table(
    settings: Settings, progress: Progress | None = None
) -> dict[str, StoredState]:
    """Every customer's stored state, keyed by ``<shop>/<customer>``."""
    latest = await read_latest(settings, progress)
    return {key.decode(): decode_stored(value) for key, value in sorted(latest.items())}


async def count_records(settings: Settings, topic: str) -> int:
    count = 0
    async for _ in read_topic(settings, topic):
        count += 1
    return count
