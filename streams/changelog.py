"""Reading the customer table straight from its compacted changelog topic.

The changelog is the authoritative copy of the table, readable without a running worker: the
latest record per key wins, and a tombstone (no value) removes the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from config.settings import Settings
from streams.codecs import StoredState, decode_stored


async def read_table(
    settings: Settings, progress: Callable[[int, int], None] | None = None
) -> dict[str, StoredState]:
    """Every customer's stored state, keyed by ``<shop>/<customer>``."""
    latest: dict[bytes, bytes | None] = {}
    async for key, value, done, total in _scan(settings):
        latest[key] = value
        if progress is not None:
            progress(done, total)
    return {
        key.decode(): decode_stored(value)
        for key, value in sorted(latest.items())
        if value is not None
    }


async def _scan(settings: Settings) -> AsyncIterator[tuple[bytes, bytes | None, int, int]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(settings.changelog_topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.changelog_topic) or set()
        tps = [TopicPartition(settings.changelog_topic, p) for p in sorted(partitions)]
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
                    done += 1
                    if record.key is not None:
                        yield record.key, record.value, done, total
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
