"""The worker's local data directory: one worker at a time, and its table store trusted only
after a clean stop (and a partition's store only while it is younger than the changelog's
tombstones: ``streams.framework.store_age``)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from config.settings import Settings

LOCK_FILE = "worker.lock"


class DataDirInUse(RuntimeError):
    """Another worker holds the data directory."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data directory for this process (released when it ends, however it ends):
    a second worker on the same directory would delete or overwrite the first one's live
    store. Raises ``DataDirInUse`` naming the directory and the worker holding it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DataDirInUse(
            f"the data directory {data_dir.resolve()} is in use by the worker with pid {holder}: "
            "give each worker a directory of its own (SEGMENTER_DATA_DIR)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


CLEAN_SHUTDOWN = "clean-shutdown"


def trust_local_store(settings: Settings, tabledir: Path) -> Path:
    """Keep the local table store only if the last worker on it stopped cleanly.

    A worker killed mid-batch can leave states in the local store whose changelog records
    were never acknowledged; the records that made them are replayed, find them applied, and
    would never send them again. Like Kafka Streams without a checkpoint, the store is then
    rebuilt from the changelog. Returns the marker to write on a clean stop."""
    marker = settings.data_dir / CLEAN_SHUTDOWN
    if tabledir.exists() and not marker.exists():
        logging.getLogger(__name__).warning(
            "the last worker on %s did not stop cleanly: rebuilding its tables from the changelog",
            settings.data_dir,
        )
        shutil.rmtree(tabledir)
    marker.unlink(missing_ok=True)
    return marker
