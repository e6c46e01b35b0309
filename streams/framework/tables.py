"""A table's store and changelog as the worker uses them: one read or one write batch per
partition of the RocksDB store, and changelog records held, sent together and acknowledged
per processed batch (see ``ChangelogAcks``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import faust
from faust.exceptions import PartitionsMismatch
from faust.stores import rocksdb as rocksdb_store
from faust.stores.rocksdb import Store as RocksDBStore

from streams.framework.outbox import Outbox, app_producer

log = logging.getLogger(__name__)


def partition_reader(table: Any) -> Callable[[int, bytes], bytes | None]:
    """Reads one key of one partition of a table. On RocksDB, one read of the partition's
    database: a table's ``get`` asks the store twice (contains, then get), through several
    mapping layers, and finds the partition from the current event as well."""

    def read(partition: int, key: bytes) -> bytes | None:
        store = table.data
        if isinstance(store, RocksDBStore):
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        got: bytes | None = table.get(key)
        return got

    return read


Row = tuple[int, bytes, bytes]  # (partition, key, value)


def partition_writer(table: Any) -> Callable[[Sequence[Row]], None]:
    """Writes keys of given partitions of a table: what ``table[key] = value`` does with a
    record of the key's partition as the current event (the changelog record, then the store),
    for many keys at once.

    On RocksDB, one write batch per partition: one append to the database's log instead of
    one per key, and none of the table's per-key layers (the current event's lookup, the store's
    key-to-partition index behind a lock, the table sensors' set counter; the store finds a key
    missing from its index in the partitions' databases). The write batch is made the way the
    installed Faust's store makes the ones it recovers the changelog with. A partition the
    table does not have (an input topic grown past it) is refused before anything is written,
    as Faust's per-key write refuses it (``PartitionsMismatch``)."""

    def write(rows: Sequence[Row]) -> None:
        for partition, _key, _value in rows:
            if not 0 <= partition < table.partitions:  # what Faust's per-key write checks
                raise PartitionsMismatch(
                    f"a record of partition {partition} for table {table.name!r}, whose "
                    f"changelog has {table.partitions} partitions: the input topics and the "
                    "table must have the same number of partitions"
                )
        for partition, key, value in rows:
            table.send_changelog(partition, key, value)
        store = table.data
        if not isinstance(store, RocksDBStore):
            for _partition, key, value in rows:
                store[key] = value
            return
        batches: dict[int, Any] = {}
        for partition, key, value in rows:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = _write_batch(store)
            batch.put(key, value)
        for partition, batch in batches.items():
            try:
                store._db_for_partition(partition).write(batch)
            except Exception as exc:
                if "No space left on device" in str(exc):
                    reopen_later(store, partition)
                raise

    return write


def reopen_later(store: RocksDBStore, partition: int) -> None:
    """Close a partition's database after a write failed for lack of space: RocksDB keeps
    refusing every write after such an error, also once there is room again, until the
    database is opened again (the store opens it at the next access; reopening while the disk
    is still full fails the same way, and is tried again at the next write)."""
    db = store._dbs.pop(partition, None)
    if db is None:
        return
    with contextlib.suppress(Exception):  # closing fails too ("Writer has previous error")
        db.close()


def _write_batch(store: RocksDBStore) -> Any:
    if store.use_rocksdict:
        return rocksdb_store.rocksdict.WriteBatch(raw_mode=True)
    return rocksdb_store.rocksdb.WriteBatch()


class _Queued:
    """What a table reads of a changelog send (``fut.message.partition``): the partition."""

    __slots__ = ("partition",)

    def __init__(self, partition: int) -> None:
        self.partition = partition

    @property
    def message(self) -> _Queued:
        return self


class ChangelogAcks:
    """The tables' changelog records: held while a batch is processed, sent together, and
    waited for until the broker has acknowledged them.

    Faust sends a table's changelog record per write through its channel path (a future, a
    pending message, a callback and a send of its own each) and keeps the record's offset in
    the store when it is acknowledged (``set_persisted_offset``: where a restart resumes
    reading the changelog). Here a table's ``send_changelog`` puts the record in an outbox
    instead; ``wait`` sends the outbox, one producer batch per changelog partition, waits for
    the broker's acknowledgements and then keeps, per batch, the offset of its last record
    in the store, as Faust's callback would have done for that record."""

    def __init__(self, app: faust.App) -> None:
        self.outbox = Outbox(app_producer(app))
        self._tables: dict[str, Any] = {}  # by changelog topic

    def watch(self, table: Any) -> None:
        topic = table.changelog_topic.get_topic_name()
        self._tables[topic] = table

        def send_changelog(
            partition: int | None,
            key: bytes,
            value: bytes | None,
            key_serializer: Any = None,
            value_serializer: Any = None,
        ) -> _Queued:
            # the tables are bytes to bytes (streams.codecs owns the encoding): sent as they are
            if partition is None:
                raise ValueError(f"a changelog record for {topic} without its partition")
            self.outbox.add(topic, key, value, partition)
            return _Queued(partition)

        table.send_changelog = send_changelog

    async def wait(self) -> None:
        """Every changelog record written so far is acknowledged and its offset kept (raises
        the first error: then no offset is kept, and a restart reads those records again)."""
        sent = await self.outbox.send_batches()
        if not sent:
            return
        await asyncio.gather(*(batch.future for batch in sent))
        for batch in sent:
            first = batch.future.result()
            try:
                self._tables[batch.topic].data.set_persisted_offset(
                    first.topic_partition, first.offset + batch.records - 1
                )
            except Exception as exc:  # kept at the next batch: a restart reads a bit more
                if "No space left on device" not in str(exc):
                    raise
                log.warning("the changelog offset could not be kept (disk full): %s", exc)


class TableStore:
    """A table of the worker's partitions as the processing reads and writes it: reads and
    batched writes by partition, single writes and deletes through the table's own API (the
    current event's partition: the record being processed), and ``durable`` once every
    changelog record written so far is acknowledged."""

    def __init__(self, table: Any, acks: ChangelogAcks) -> None:
        self.table = table
        self._read = partition_reader(table)
        self._write = partition_writer(table)
        self._acks = acks
        acks.watch(table)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._read(partition, key)

    def put_many(self, rows: Sequence[Row]) -> None:
        self._write(rows)

    def put(self, key: bytes, value: bytes) -> None:
        self.table[key] = value

    def delete(self, key: bytes) -> None:
        """Delete the key: a tombstone on the changelog, present or not."""
        del self.table[key]

    def pop(self, key: bytes) -> None:
        """Delete the key if present."""
        self.table.pop(key, None)

    def delete_in(self, partition: int, key: bytes, *, stored: bool = True) -> None:
        """A tombstone for the key on the changelog partition ``partition``, and (``stored``)
        the key deleted from that partition's store only. ``delete`` would delete it from
        whichever partition Faust's key index names, or from every one: a request sent to
        every partition must touch its own partition's copy alone. ``stored=False``: the
        partition holds nothing to delete (in the memory store, partitions share one map)."""
        self.table.send_changelog(partition, key, None)
        if not stored:
            return
        store = self.table.data
        if isinstance(store, RocksDBStore):
            store._db_for_partition(partition).delete(key)
            store._key_index.pop(key, None)  # it may name this partition
        else:
            store.pop(key, None)

    def items(self) -> Any:
        return self.table.items()

    def values(self) -> Any:
        return self.table.values()

    async def durable(self) -> None:
        await self._acks.wait()

    def reopen(self) -> None:
        """After a write failed for lack of space: the store's databases are opened again at
        their next access (see ``reopen_later``)."""
        store = self.table.data
        if isinstance(store, RocksDBStore):
            for partition in list(store._dbs):
                reopen_later(store, partition)
