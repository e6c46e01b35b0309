"""Redis removals that could not be made yet (Redis away or refusing), kept in the erasures
table so that a crash does not lose them: an erased customer, or one who withdrew consent,
must leave Redis even if the worker that processed the request dies before Redis answers.

An entry is written to the table (and its changelog, acknowledged before the request's offset
is committed) when a removal fails, read back when the table's partitions are recovered, and
deleted (a tombstone) once the removal succeeded. The entry names the customer (their
pseudonym with pseudonymisation on) until then: the one place where the erasures table holds
an id rather than a hash of it (see docs/privacy.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

PREFIX = b"redis-removal:"


class Table(Protocol):
    """The erasures table (``streams.framework.tables.TableStore``)."""

    def put_many(self, rows: Sequence[tuple[int, bytes, bytes]]) -> None: ...

    def delete_in(self, partition: int, key: bytes, *, stored: bool = True) -> None: ...

    def items(self) -> Any: ...


def entry_key(shop_id: str, customer_id: str) -> bytes:
    return PREFIX + f"{shop_id}/{customer_id}".encode()


class RemovalJournal:
    """The pending removals of the worker's partitions, in the erasures table."""

    def __init__(self, table: Table) -> None:
        self._table = table
        # The entries this worker knows are stored, with their partition.
        self._held: dict[bytes, int] = {}

    def add(self, partition: int, shop_id: str, customer_id: str) -> None:
        """Store a pending removal (written with the running batch's changelog records)."""
        key = entry_key(shop_id, customer_id)
        if self._held.get(key) == partition:
            return
        self._table.put_many([(partition, key, orjson.dumps([partition, shop_id, customer_id]))])
        self._held[key] = partition

    def done(self, shop_id: str, customer_id: str) -> None:
        """The removal succeeded: delete its entry, if one is stored."""
        partition = self._held.pop(entry_key(shop_id, customer_id), None)
        if partition is not None:
            self._table.delete_in(partition, entry_key(shop_id, customer_id))

    def stored(self) -> list[tuple[int, str, str]]:
        """Every pending removal in the table (partition, shop, customer); after recovery."""
        found = []
        for key, value in self._table.items():
            if not key.startswith(PREFIX):
                continue
            try:
                partition, shop_id, customer_id = orjson.loads(value)
            except (orjson.JSONDecodeError, TypeError, ValueError):
                log.exception("an unreadable pending Redis removal in the erasures table")
                continue
            self._held[key] = partition
            found.append((int(partition), str(shop_id), str(customer_id)))
        return found
