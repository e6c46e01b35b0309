"""What happens when processing a record fails: the batch is processed again, the same records
in the same order, after a backoff; a record that keeps failing is dead-lettered with the
error as its reason, and its partition goes on. A failure of a dependency (Redis, the broker,
the local disk) is not the record's fault: it is retried until the dependency answers again,
however long that takes, and never dead-letters the record.

Nothing is skipped: a batch is acknowledged only once every record in it was processed or
dead-lettered (``streams.checkpoint``), and a commit never passes an offset that was not
acknowledged (``streams.framework.patches.next_commit``). While a record is retried its
partition is *stuck*: ``segmenter_stuck_partitions`` counts it, an alert fires when it stays
so, and ``/readyz`` answers 503 while the local disk is full.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.errors import KafkaError

from streams.dlq import SourceRecord
from streams.redis_cache import REDIS_FAILURES

log = logging.getLogger(__name__)

# Attempts of a batch whose same record fails before that record is dead-lettered.
MAX_ATTEMPTS: Final = 5
# The backoff before attempt n (n >= 2) at a record is FIRST_BACKOFF * 2 ** (n - 2), at most
# MAX_BACKOFF: records of a batch that fail once each wait FIRST_BACKOFF each.
FIRST_BACKOFF_SECONDS: Final = 0.5
MAX_BACKOFF_SECONDS: Final = 30.0

Handler = Callable[[SourceRecord], Awaitable[None]]
Item = tuple[SourceRecord, Handler]


class RecordFailed(Exception):
    """Processing record ``index`` of a batch raised ``error`` (the batch was discarded)."""

    def __init__(self, index: int, record: SourceRecord, error: BaseException) -> None:
        super().__init__(f"{record.topic}[{record.partition}]@{record.offset}: {error!r}")
        self.index = index
        self.record = record
        self.error = error


class DiskFull(OSError):
    """The local store could not be written: no space left on its device."""


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the device is full (an OSError, or RocksDB's IO error text)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or isinstance(error, DiskFull)


def dependency_failure(error: BaseException) -> bool:
    """A failure of Redis, the broker or the local disk: retried, never the record's fault."""
    return isinstance(error, (*REDIS_FAILURES, KafkaError)) or disk_full(error)


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt`` (2, 3, ...) at the same record (or, for a
    dependency, after ``attempt - 1`` consecutive failures)."""
    return min(FIRST_BACKOFF_SECONDS * 2 ** max(attempt - 2, 0), MAX_BACKOFF_SECONDS)


@dataclass
class Outcome:
    """What became of a batch: the records dead-lettered for failing, with their errors."""

    attempts: int
    dead_lettered: list[tuple[SourceRecord, str]]


class Retries:
    """Runs batches with retries (see the module docstring); ``stuck`` is the set of input
    partitions, as ``(topic, partition)``, whose batch is being retried now."""

    def __init__(
        self,
        dead_letter: Callable[[SourceRecord, str, str], Awaitable[None]],
        on_failure: Callable[[str], None] = lambda _kind: None,
        on_disk_full: Callable[[], None] = lambda: None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        wait: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._dead_letter = dead_letter
        self._on_failure = on_failure
        self._on_disk_full = on_disk_full
        self.max_attempts = max_attempts
        self.wait = wait
        self.stuck: set[tuple[str, int]] = set()
        self.disk_full = False

    async def run(
        self,
        process: Callable[[Sequence[Item]], Awaitable[None]],
        items: Sequence[Item],
        still_ours: Callable[[], bool] = lambda: True,
    ) -> Outcome | None:
        """Process the batch until it goes through; None if its partitions were taken away
        meanwhile (a rebalance: their new owner reads the records again)."""
        items = list(items)
        failures: dict[int, int] = {}  # index -> failed attempts of that record
        outage = 0  # consecutive attempts a dependency failed
        attempt = 1
        parked: list[tuple[SourceRecord, str]] = []
        try:
            while True:
                try:
                    await process(items)
                except RecordFailed as failed:
                    error, record = failed.error, failed.record
                    self.stuck.add((record.topic, record.partition))
                    attempt += 1
                    if dependency_failure(error):
                        self._on_failure("dependency")
                        self.disk_full = disk_full(error)
                        if self.disk_full:  # the local store refuses writes until reopened
                            self._on_disk_full()
                        outage += 1
                        delay = backoff(outage + 1)
                        log.warning(
                            "processing %s[%d]@%d waits %.1f s for a dependency: %r",
                            record.topic,
                            record.partition,
                            record.offset,
                            delay,
                            error,
                        )
                    else:
                        self._on_failure("record")
                        outage = 0
                        count = failures[failed.index] = failures.get(failed.index, 0) + 1
                        log.error(
                            "processing %s[%d]@%d failed (%d of %d attempts)",
                            record.topic,
                            record.partition,
                            record.offset,
                            count,
                            self.max_attempts,
                            exc_info=error,
                        )
                        if count >= self.max_attempts:
                            reason = f"failed {count} times: {error!r}"
                            items[failed.index] = (record, self._parking(reason))
                            parked.append((record, reason))
                            continue  # at once: the record is dead-lettered this time
                        delay = backoff(count + 1)
                    await self.wait(delay)
                    if not still_ours():
                        return None
                    continue
                return Outcome(attempt, parked)
        finally:
            self.stuck.difference_update((r.topic, r.partition) for r, _ in items)
            if not self.stuck:
                self.disk_full = False

    def _parking(self, reason: str) -> Handler:
        async def dead_letter(record: SourceRecord) -> None:
            await self._dead_letter(record, "repeated_failure", reason)

        return dead_letter
