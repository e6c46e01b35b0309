"""The baseline: the least a consumer of the same stream must do, with the raw Kafka client.

Consume, decode the JSON, update a per-customer dict, produce one record per order (the size
of a changelog entry) to the same partition of an output topic. No validation, no rules, no
Redis: the ceiling a Python consumer on this machine and broker can reach.
"""

from __future__ import annotations

import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def tally(state: dict[bytes, list[int]], key: bytes, value: bytes) -> bytes:
    """The baseline's work on one record: decode it, count the customer's order and add its
    total; returns the output record (the size of a changelog entry)."""
    order = orjson.loads(value)
    entry = state.get(key)
    if entry is None:
        entry = state[key] = [0, 0]
    entry[0] += 1
    entry[1] += order.get("total", 0)
    return orjson.dumps(entry)


async def run_raw(bootstrap: str, topic: str, out_topic: str, expected: int) -> tuple[int, float]:
    """Process ``expected`` records of ``topic`` from the beginning; (records, seconds from the
    first record received until the last output record is acknowledged)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024, acks=1
    )
    await consumer.start()
    await producer.start()
    state: dict[bytes, list[int]] = {}
    seen = 0
    started: float | None = None
    try:
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batches and started is None:
                started = time.perf_counter()
            for tp, messages in batches.items():
                for message in messages:
                    await producer.send(
                        out_topic,
                        key=message.key,
                        value=tally(state, message.key, message.value),
                        partition=tp.partition,
                    )
                seen += len(messages)
        await producer.flush()
        elapsed = time.perf_counter() - (started or time.perf_counter())
        await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()
    return seen, elapsed
