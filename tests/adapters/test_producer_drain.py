"""The wait for the tables' changelog records: they are sent together and waited for until the
broker has acknowledged every one (streams.framework.tables.ChangelogAcks)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.framework.tables import ChangelogAcks


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any) -> object:
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class _Producer:
    """Batches are acknowledged when the test says so, at base offsets it chooses."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[Any], asyncio.Future[Any]]] = []

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch.records, future))
        return future


class _Table:
    """A table as ChangelogAcks sees it: its changelog topic and its store's offsets."""

    def __init__(self, topic: str) -> None:
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: topic)
        self.data = SimpleNamespace(persisted={})
        self.data.set_persisted_offset = lambda tp, offset: self.data.persisted.update(
            {(tp.topic, tp.partition): offset}
        )


def _app(producer: _Producer) -> Any:
    """An app as ChangelogAcks sees it: the producer, once started."""
    return SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))


def _ack(entry: tuple[str, int, list[Any], asyncio.Future[Any]], base: int) -> None:
    topic, partition, _records, future = entry
    tp = TopicPartition(topic, partition)
    future.set_result(SimpleNamespace(topic_partition=tp, offset=base))


async def test_the_changelog_wait_ends_when_the_broker_acknowledged_every_record() -> None:
    """Records go out together, one batch per changelog partition (tombstones too); the wait
    ends when every batch is acknowledged, and only then is the offset of each partition's
    last record kept in its table's store (where a restart resumes reading the changelog)."""
    producer = _Producer()
    customers, erasures = _Table("customers-changelog"), _Table("erasures-changelog")
    acks = ChangelogAcks(_app(producer))
    acks.watch(customers)
    acks.watch(erasures)
    customers.send_changelog(0, b"a", b"1")  # type: ignore[attr-defined]
    erasures.send_changelog(1, b"e", b"x")  # type: ignore[attr-defined]
    customers.send_changelog(0, b"b", None)  # type: ignore[attr-defined]
    customers.send_changelog(1, b"c", b"3")  # type: ignore[attr-defined]
    assert producer.sent == []  # held until the wait
    waiting = asyncio.create_task(acks.wait())
    async with asyncio.timeout(1):
        while len(producer.sent) < 3:
            await asyncio.sleep(0)
    batches = {(topic, partition): records for topic, partition, records, _ in producer.sent}
    assert batches == {
        ("customers-changelog", 0): [(b"a", b"1"), (b"b", None)],
        ("erasures-changelog", 1): [(b"e", b"x")],
        ("customers-changelog", 1): [(b"c", b"3")],
    }
    bases = [40, 7, 12]
    for entry, base in list(zip(producer.sent, bases, strict=True))[:-1]:
        _ack(entry, base)
        await asyncio.sleep(0)
        assert not waiting.done()
        assert customers.data.persisted == erasures.data.persisted == {}
    _ack(producer.sent[-1], bases[-1])
    await asyncio.wait_for(waiting, 1)
    persisted = {**customers.data.persisted, **erasures.data.persisted}
    expected = {}
    for (topic, partition, records, _), base in zip(producer.sent, bases, strict=True):
        expected[topic, partition] = base + len(records) - 1
    assert persisted == expected
    assert customers.data.persisted[("customers-changelog", 0)] == 41
    await asyncio.wait_for(acks.wait(), 1)  # nothing sent since: returns at once
    assert len(producer.sent) == 3


async def test_a_changelog_record_the_broker_refused_fails_the_wait() -> None:
    producer = _Producer()
    customers = _Table("customers-changelog")
    acks = ChangelogAcks(_app(producer))
    acks.watch(customers)
    customers.send_changelog(0, b"a", b"1")  # type: ignore[attr-defined]
    waiting = asyncio.create_task(acks.wait())
    async with asyncio.timeout(1):
        while not producer.sent:
            await asyncio.sleep(0)
    producer.sent[0][3].set_exception(KafkaTimeoutError())
    with pytest.raises(KafkaTimeoutError):
        await waiting
    assert customers.data.persisted == {}  # no offset kept: a restart reads the record again


async def test_faust_tables_write_their_changelog_through_the_outbox() -> None:
    """The installed Faust's tables, on a set and a delete, call ``send_changelog`` with the
    current event's partition and read the partition back from what it returns."""

    import faust

    from streams.framework.intake import activate

    app = faust.App("drain-test", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("customers", key_type=bytes, value_type=bytes, partitions=4)
    producer = _Producer()
    acks = ChangelogAcks(_app(producer))
    acks.watch(table)

    class Event:  # the current stream event: its record's partition
        message = SimpleNamespace(topic="orders", partition=3)

    event = Event()
    table._verified_source_topics_for_partitions.add("orders")  # no consumer to ask
    activate(event)
    table[b"k"] = b"v"
    del table[b"k"]
    waiting = asyncio.create_task(acks.wait())
    async with asyncio.timeout(1):
        while not producer.sent:
            await asyncio.sleep(0)
    topic, partition, records, _future = producer.sent[0]
    assert (topic, partition) == (table.changelog_topic.get_topic_name(), 3)
    assert records == [(b"k", b"v"), (b"k", None)]
    waiting.cancel()
