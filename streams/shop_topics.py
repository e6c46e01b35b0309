"""The compacted topics that hold one record per shop (its calibration, its prediction model):
published, read up to their end, and followed by every worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from config.settings import Settings
from streams.changelog import read_topic, topic_partitions
from streams.clients import kafka_options, started

log = logging.getLogger(__name__)
T = TypeVar("T")


async def publish(settings: Settings, topic: str, records: Sequence[tuple[str, bytes]]) -> None:
    """Send ``(shop id, value)`` records, keyed by shop, each acknowledged by every replica."""
    if not records:
        return
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await started(producer)
    try:
        for shop_id, value in records:
            await producer.send_and_wait(topic, key=shop_id.encode(), value=value)
    finally:
        await producer.stop()


async def read_latest(
    settings: Settings, topic: str, decode: Callable[[bytes], T], shop_of: Callable[[T], str]
) -> dict[str, T]:
    """The latest record of every shop on ``topic``, decoded."""
    latest: dict[str, T] = {}
    async for record in read_topic(settings, topic):
        if record.value is not None and record.key is not None:
            item = decode(record.value)
            latest[shop_of(item)] = item
    return latest


async def follow(
    settings: Settings,
    topic: str,
    decode: Callable[[bytes], T],
    on_item: Callable[[T], Awaitable[object]],
    what: str,
) -> None:
    """Call ``on_item`` for every record on ``topic``, then for each new one (runs until
    cancelled); a record that cannot be decoded or adopted is logged as ``what`` and passed.
    The topic is compacted and small: one record per shop."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await started(consumer)
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        await on_item(decode(record.value))
                    except Exception:
                        log.exception("cannot adopt %s at offset %d", what, record.offset)
    except asyncio.CancelledError:
        raise
    finally:
        await consumer.stop()


def schedule_due(
    stamps: Iterable[datetime], last_attempt: datetime | None, now: datetime, interval: timedelta
) -> bool:
    """Whether a scheduled recomputation of the shops' records is due: ``interval`` after the
    oldest record's time (``stamps``) or after the last attempt, whichever is later; now when
    there is neither."""
    oldest = min(stamps, default=None)
    since = max([t for t in (oldest, last_attempt) if t is not None], default=None)
    return since is None or now - since >= interval
