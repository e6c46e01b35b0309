"""Privacy requests from the command line: publishing an erasure and waiting for its receipt."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from config.settings import Settings
from streams.clients import kafka_options, started
from streams.framework.consumer import current_partitions


async def request_erasure(
    settings: Settings, shop_id: str, customer_id: str, wait: bool, timeout: float
) -> dict[str, Any]:
    """Publish an erasure request; with ``wait``, return the worker's receipt."""
    request_id = str(uuid.uuid4())
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await started(consumer)
    try:
        receipts = [
            TopicPartition(settings.erasure_receipts_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.erasure_receipts_topic) or ())
        ] or await _partitions(consumer, settings.erasure_receipts_topic)
        consumer.assign(receipts)
        await consumer.seek_to_end(*receipts)
        for tp in receipts:
            await consumer.position(tp)  # pin the start before the request is published
        await _publish(settings, shop_id, customer_id, request_id)
        if not wait:
            return {"type": "erasure_requested", "request_id": request_id, "shop_id": shop_id}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    receipt: dict[str, Any] = orjson.loads(record.value)
                    if receipt.get("request_id") == request_id:
                        return receipt
        raise TimeoutError(
            f"no erasure receipt for request {request_id} within {timeout:.0f}s "
            "(is a worker running?)"
        )
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = await current_partitions(consumer, topic)
    if not partitions:
        raise ConnectionError(f"topic {topic} does not exist (has a worker ever run?)")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def _publish(settings: Settings, shop_id: str, customer_id: str, request_id: str) -> None:
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await started(producer)
    try:
        request = {
            "type": "erasure_requested",
            "request_id": request_id,
            "shop_id": shop_id,
            "customer_id": customer_id,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        await producer.send_and_wait(
            settings.erasure_topic, key=customer_id.encode(), value=orjson.dumps(request)
        )
    finally:
        await producer.stop()
