"""Reads of one partition of a table straight from its RocksDB database
(streams.framework.tables.partition_reader) see what the installed Faust's table wrote there,
and nothing else; writes of many keys at once (partition_writer) leave the table as Faust's own
writes do."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.exceptions import PartitionsMismatch

from streams.framework.intake import activate
from streams.framework.tables import ChangelogAcks, partition_reader, partition_writer


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(topic="orders", partition=partition)


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_a_partition_read_sees_the_table_writes_of_that_partition(
    tmp_path: Path, store: str
) -> None:
    app = faust.App("reads-test", broker="kafka://127.0.0.1:1", store=store, datadir=tmp_path)
    table = app.Table("customers", key_type=bytes, value_type=bytes, partitions=4)
    table._verified_source_topics_for_partitions.add("orders")  # no consumer to ask
    ChangelogAcks(SimpleNamespace(producer=None)).watch(table)  # type: ignore[arg-type]
    read = partition_reader(table)
    events = {p: _Event(p) for p in (1, 3)}
    for partition, key, value in [(3, b"a", b"1"), (1, b"b", b"2"), (3, b"a", b"3")]:
        activate(events[partition])
        table[key] = value
    assert read(3, b"a") == b"3"
    assert read(1, b"b") == b"2"
    assert read(3, b"missing") is None
    if store == "rocksdb://":  # one database per partition: another partition has no such key
        assert read(1, b"a") is None
    activate(events[3])
    del table[b"a"]
    assert read(3, b"a") is None


ROWS = [(3, b"a", b"1"), (1, b"b", b"2"), (3, b"c", b"3"), (3, b"a", b"4"), (0, b"d", b"5")]


def _table(tmp_path: Path, store: str, name: str) -> tuple[Any, ChangelogAcks]:
    app = faust.App(name, broker="kafka://127.0.0.1:1", store=store, datadir=tmp_path / name)
    table = app.Table("customers", key_type=bytes, value_type=bytes, partitions=4)
    table._verified_source_topics_for_partitions.add("orders")
    acks = ChangelogAcks(SimpleNamespace(producer=None))  # type: ignore[arg-type]
    acks.watch(table)
    return table, acks


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_writes_of_many_keys_leave_the_table_as_one_assignment_per_key(
    tmp_path: Path, store: str
) -> None:
    events = {p: _Event(p) for p in range(4)}  # (the current event is a weak reference)
    faust_table, faust_acks = _table(tmp_path, store, "assigned")
    for partition, key, value in ROWS:
        activate(events[partition])
        faust_table[key] = value
    table, acks = _table(tmp_path, store, "written")
    activate(events[2])  # not the rows' partition
    partition_writer(table)(ROWS)
    # the same changelog records (key, value, partition), in the same order
    assert [r[1:] for r in acks.outbox._records] == [r[1:] for r in faust_acks.outbox._records]
    assert [r[3] for r in acks.outbox._records] == [r[0] for r in ROWS]  # to the rows' partitions
    read, faust_read = partition_reader(table), partition_reader(faust_table)
    for partition in range(4):
        for key in (b"a", b"b", b"c", b"d", b"missing"):
            assert read(partition, key) == faust_read(partition, key), (partition, key)
    assert read(3, b"a") == b"4"
    # Faust's own reads, iteration and deletes find the keys written past its key index
    assert sorted(table.items()) == sorted(faust_table.items())
    activate(None)  # outside a stream: the store finds them
    assert (table.get(b"c"), table.get(b"d")) == (b"3", b"5")
    activate(events[3])
    assert table.get(b"a") == b"4"
    del table[b"c"]
    assert read(3, b"c") is None and b"c" not in table


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_a_partition_the_table_does_not_have_is_refused_before_anything_is_written(
    tmp_path: Path, store: str
) -> None:
    table, acks = _table(tmp_path, store, "grown")
    with pytest.raises(PartitionsMismatch, match="partition 4 for table 'customers'"):
        partition_writer(table)([(1, b"a", b"1"), (4, b"b", b"2")])
    assert not acks.outbox._records
    assert partition_reader(table)(1, b"a") is None


async def test_an_acknowledged_changelog_batch_is_where_a_warm_restart_resumes(
    tmp_path: Path,
) -> None:
    """With the installed Faust's RocksDB store: once a batch of changelog records is
    acknowledged, the store's persisted offset (where a restart resumes reading the changelog)
    is the offset of the batch's last record, per partition; before, none."""
    import asyncio

    from aiokafka import TopicPartition

    from tests.adapters.test_producer_drain import _ack, _app, _Producer

    app = faust.App(
        "offsets-test", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=tmp_path
    )
    table = app.Table("customers", key_type=bytes, value_type=bytes, partitions=4)
    table._verified_source_topics_for_partitions.add("orders")
    producer = _Producer()
    acks = ChangelogAcks(_app(producer))
    acks.watch(table)
    topic = table.changelog_topic.get_topic_name()
    events = {p: _Event(p) for p in (1, 3)}
    for partition, key in [(3, b"a"), (1, b"b"), (3, b"c"), (3, b"a")]:
        activate(events[partition])
        table[key] = key
    waiting = asyncio.create_task(acks.wait())
    async with asyncio.timeout(1):
        while len(producer.sent) < 2:
            await asyncio.sleep(0)
    assert table.data.persisted_offset(TopicPartition(topic, 3)) is None
    bases = {3: 100, 1: 7}
    for entry in producer.sent:
        _ack(entry, bases[entry[1]])
    await asyncio.wait_for(waiting, 1)
    assert table.data.persisted_offset(TopicPartition(topic, 3)) == 102  # three records
    assert table.data.persisted_offset(TopicPartition(topic, 1)) == 7
