"""A partition's local RocksDB store is not reopened once it is so old that the changelog may
have dropped tombstones it never saw (an erased customer would come back)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore

log = logging.getLogger(__name__)
# The longest a partition's local store may have gone unused and still be reopened (seconds;
# None: any age). Set by ``discard_stale_stores``.
_max_store_age: float | None = None


def store_age(path: Path, now: float | None = None) -> float | None:
    """Seconds since anything in a partition's store directory was last written (RocksDB
    writes its log files on every write, open and close); None if there is no store."""
    if not path.is_dir():
        return None
    newest = max(
        (entry.stat().st_mtime for entry in os.scandir(path) if entry.is_file()),
        default=path.stat().st_mtime,
    )
    return (time.time() if now is None else now) - newest


def discard_stale_stores(delete_retention_ms: int) -> None:
    """Before a partition's RocksDB store is opened (at start, or when a rebalance gives the
    partition back), discard it if it went unused for half the changelog's
    ``delete.retention.ms`` or longer: it resumes reading the changelog from its stored
    offset, and a tombstone written after that (an erasure processed by another worker) is
    kept only for ``delete.retention.ms`` once compacted; a store that missed it would bring
    the erased customer back. Half leaves the other half for the rebuild's reading. The
    partition is then rebuilt from the changelog, as after a crash."""
    global _max_store_age
    _max_store_age = delete_retention_ms / 2000
    if getattr(RocksDBStore._open_for_partition, "_checks_age", False):
        return
    opener = RocksDBStore._open_for_partition

    def open_for_partition(self: Any, partition: int) -> Any:
        path = Path(self.partition_path(partition))
        age = store_age(path)
        if _max_store_age is not None and age is not None and age >= _max_store_age:
            log.warning(
                "the local store %s was last used %.0f hours ago, longer than half the "
                "changelog's delete.retention.ms: rebuilding it from the changelog instead of "
                "reopening it (it may have missed compacted tombstones)",
                path,
                age / 3600,
            )
            shutil.rmtree(path)
        return opener(self, partition)

    open_for_partition._checks_age = True  # type: ignore[attr-defined]
    RocksDBStore._open_for_partition = open_for_partition  # type: ignore[method-assign]
