"""Privacy requests from the command line: publishing an erasure to every partition of the
erasure topic and collecting the workers' receipts."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from config.settings import Settings
from models.events import ERASURE_EVENT
from streams.clients import kafka_options, started
from streams.framework.consumer import current_partitions


def check_request(shop_id: str, customer_id: str) -> str | None:
    """Why a worker would dead-letter an erasure request for these ids (an empty id, a control
    character, a ``/`` in the shop id, ...), or None: checked before it is sent, so the command
    does not wait for receipts that never come."""
    try:
        ERASURE_EVENT.validate_python(
            {
                "type": "erasure_requested",
                "request_id": str(uuid.uuid4()),
                "shop_id": shop_id,
                "customer_id": customer_id,
                "occurred_at": datetime.now(UTC),
            }
        )
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
    return None


async def request_erasure(
    settings: Settings, shop_id: str, customer_id: str, wait: bool, timeout: float
) -> dict[str, Any]:
    """Publish an erasure request to every partition of the erasure topic; with ``wait``,
    return the receipts of every partition combined (see ``combine``).

    Every partition gets the request because the customer's state is in the partition the
    webshop's producer sent their orders to, and producers differ in how they partition
    (librdkafka's default hashes the key with CRC32, the Java client and aiokafka with
    murmur2): each partition's worker looks at its own partition and sends a receipt."""
    request_id = str(uuid.uuid4())
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await started(consumer)
    try:
        receipts = await _partitions(consumer, settings.erasure_receipts_topic)
        requests = [tp.partition for tp in await _partitions(consumer, settings.erasure_topic)]
        consumer.assign(receipts)
        await consumer.seek_to_end(*receipts)
        for tp in receipts:
            await consumer.position(tp)  # pin the start before the request is published
        await _publish(settings, shop_id, customer_id, request_id, requests)
        if not wait:
            return {
                "type": "erasure_requested",
                "request_id": request_id,
                "shop_id": shop_id,
                "partitions": len(requests),
            }
        found: dict[int | None, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _complete(found, requests):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    receipt: dict[str, Any] = orjson.loads(record.value)
                    if receipt.get("request_id") == request_id:
                        found[receipt.get("partition")] = receipt
        if not _complete(found, requests):
            missing = sorted(set(requests) - set(found))
            raise TimeoutError(
                f"no erasure receipt for request {request_id} from partition(s) "
                f"{', '.join(map(str, missing))} of {settings.erasure_topic} within "
                f"{timeout:.0f}s ({len(found)} of {len(requests)} answered; is a worker "
                "running for every partition?)"
            )
        return combine(list(found.values()), len(requests))
    finally:
        await consumer.stop()


def _complete(found: dict[int | None, dict[str, Any]], partitions: list[int]) -> bool:
    """Every partition answered (a receipt without a partition, from a worker older than
    this command, answers for the request as a whole)."""
    return None in found or set(partitions) <= set(found)


def combine(receipts: list[dict[str, Any]], partitions: int) -> dict[str, Any]:
    """One receipt for a request sent to ``partitions`` partitions: the state was deleted if
    one partition held it (``state_found_on`` names it), Redis's copy is gone if every
    partition removed it, pending if any could not."""
    first = receipts[0]
    return {
        "type": "erasure_completed",
        "request_id": first["request_id"],
        "shop_id": first["shop_id"],
        "requested_at": first["requested_at"],
        "completed_at": max(r["completed_at"] for r in receipts),
        "state_deleted": any(r["state_deleted"] for r in receipts),
        "cache_deleted": all(r["cache_deleted"] for r in receipts),
        "cache_deletion_pending": any(r["cache_deletion_pending"] for r in receipts),
        "partitions": partitions,
        "state_found_on": sorted(
            r["partition"]
            for r in receipts
            if r["state_deleted"] and r.get("partition") is not None
        ),
    }


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic) or await current_partitions(consumer, topic)
    if not partitions:
        raise ConnectionError(f"topic {topic} does not exist (has a worker ever run?)")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def _publish(
    settings: Settings, shop_id: str, customer_id: str, request_id: str, partitions: list[int]
) -> None:
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await started(producer)
    try:
        request = orjson.dumps(
            {
                "type": "erasure_requested",
                "request_id": request_id,
                "shop_id": shop_id,
                "customer_id": customer_id,
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        )
        sent = [
            await producer.send(
                settings.erasure_topic, key=customer_id.encode(), value=request, partition=p
            )
            for p in partitions
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
