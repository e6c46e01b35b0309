"""A changelog with a million customers, for the restart phase.

Real states, made by the core from the generated stream: the first ``templates`` customers'
orders are applied with the product's own rules, and every further customer is a copy of one
of them under its own id (ids have one length, so a copy is a byte substitution), written to
the partition the orders topic's partitioner gives the customer, as a worker would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from bench.core import Fold
from bench.data import StreamSpec, order_stream
from config.settings import Settings
from models.state import CustomerState, state_key
from streams.codecs import encode_stored


def template_states(count: int, spec: StreamSpec) -> list[CustomerState]:
    """The states of the first ``count`` customers of the stream after all their orders."""
    fold = Fold()
    wanted = {f"{spec.id_prefix}{i:07d}" for i in range(count)}
    for key, value in order_stream(spec):
        if key.decode() in wanted:
            fold.apply(key, value)
    return fold.states()


async def create_compacted_topic(bootstrap: str, name: str, partitions: int) -> None:
    """A compacted topic, like a table's changelog."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives a record key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def fill_changelog(
    settings: Settings,
    customers: int,
    bootstrap: str,
    progress: Callable[[], Any],
    templates: int = 2000,
) -> None:
    spec = StreamSpec(customers=templates)
    states = template_states(templates, spec)
    partitions = settings.partitions
    encoded = [
        (s.shop_id, s.customer_id, [encode_stored(p, s) for p in range(partitions)]) for s in states
    ]
    # as the worker would create it: compacted, co-partitioned with the orders
    await create_compacted_topic(bootstrap, settings.changelog_topic, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1024 * 1024, acks=1
    )
    await producer.start()
    counts: dict[int, int] = defaultdict(int)
    try:
        with progress() as bar:
            task = bar.add_task(f"writing {customers} customers to the changelog", total=customers)
            pending = []
            for i in range(customers):
                shop, template_id, values = encoded[i % len(encoded)]
                customer_id = f"{spec.id_prefix}{i:07d}"
                partition = partition_for(customer_id.encode(), partitions)
                value = values[partition].replace(template_id.encode(), customer_id.encode())
                counts[partition] += 1
                pending.append(
                    await producer.send(
                        settings.changelog_topic,
                        key=state_key(shop, customer_id).encode(),
                        value=value,
                        partition=partition,
                    )
                )
                if len(pending) >= 10_000:
                    for future in pending:
                        await future
                    bar.advance(task, len(pending))
                    pending = []
            for future in pending:
                await future
            bar.advance(task, len(pending))
    finally:
        await producer.stop()
