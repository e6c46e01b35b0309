"""Time: which customer changes segment when (the due index, kept per partition so the work per
tick grows with the number of customers due, not with the number of customers), how far each
orders partition has been read, and the clock ticks that bring due times and re-evaluations to
a customer's partition.

Clock ticks are the way work that does not come from an order reaches a customer's partition
(so the table is only ever written inside stream iteration): ``due`` ticks when a due time
passes (wall clock), ``reevaluate`` ticks after a new calibration or rule set. A due time
passes for a partition only once its orders up to that instant have been read (``read_until``):
a worker behind its input (after a restart, a stop, a burst) would otherwise find a customer
inactive whose order is still waiting in the backlog.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

from models.events import ClockTick, TickKind
from streams.codecs import encode_tick
from streams.dlq import SourceRecord

# Wall clock: an orders partition whose offsets say records are waiting but none has been
# processed for this long is taken as read (nothing comes: transaction markers at the log's
# end, or fetching paused), so its due times pass by the wall clock again.
STALLED_SECONDS = 30.0

ClockMode = Literal["wall", "event"]
# (end offset, committed offset) of an orders partition as the consumer knows them, or None.
InputEnd = Callable[[int], tuple[int, int | None] | None]


class DueIndex:
    """Per-partition min-heaps of (due time, state key).

    Entries are never removed in place: a customer whose due time moved simply gets a new
    entry, and the caller re-checks the state when an entry pops (lazy deletion). ``_latest``
    drops stale entries on pop so a customer is handed out once per due time.
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
        self._latest: dict[str, datetime] = {}
        self.watermarks: dict[int, datetime] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def clear(self) -> None:
        self._heaps.clear()
        self._latest.clear()
        self.watermarks.clear()

    def schedule(self, partition: int, key: str, due: datetime | None) -> None:
        """Record the customer's current due time (None: nothing due)."""
        if due is None:
            self._latest.pop(key, None)
            return
        if self._latest.get(key) == due:
            return
        self._latest[key] = due
        heapq.heappush(self._heaps[partition], (due, key))

    def pop_due(self, partition: int, now: datetime) -> list[tuple[str, datetime]]:
        """(key, due time) on ``partition`` due at or before ``now``, earliest first."""
        heap = self._heaps.get(partition)
        due_keys: list[tuple[str, datetime]] = []
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._latest.get(key) == due:
                del self._latest[key]
                due_keys.append((key, due))
        return due_keys

    def overdue(self, before: datetime) -> list[datetime]:
        """Due times still waiting in the index that are earlier than ``before``.

        Walks only the heap nodes that are due (a parent is never later than its children),
        so the cost grows with the number of overdue customers.
        """
        found = []
        for heap in self._heaps.values():
            stack = [0] if heap else []
            while stack:
                i = stack.pop()
                due, key = heap[i]
                if due >= before:
                    continue
                if self._latest.get(key) == due:
                    found.append(due)
                stack += [c for c in (2 * i + 1, 2 * i + 2) if c < len(heap)]
        return found

    def partitions(self) -> list[int]:
        return [p for p, heap in self._heaps.items() if heap]

    def advance_watermark(self, partition: int, at: datetime) -> datetime:
        """Event-time mode: the partition's clock is the newest event time seen on it."""
        current = self.watermarks.get(partition)
        if current is None or at > current:
            self.watermarks[partition] = at
            return at
        return current

    def next_due(self) -> datetime | None:
        heads = [heap[0][0] for heap in self._heaps.values() if heap]
        return min(heads) if heads else None


class Clock:
    """The due index, the partitions' read positions and the ticks to send.

    ``input_end`` (wall clock): what the consumer knows of an orders partition; None: no such
    knowledge, the input counts as read."""

    def __init__(self, mode: ClockMode, input_end: InputEnd | None = None) -> None:
        self.mode = mode
        self.input_end = input_end
        self.index = DueIndex()
        # Wall clock: due ticks sent and not processed yet (key -> due time).
        self.in_flight: dict[str, datetime] = {}
        # (partition, key) of customers to re-evaluate, handed out as ticks by the clock timer.
        self.pending_reevaluation: list[tuple[int, str]] = []
        # Orders partition -> (next offset, timestamp, monotonic time) of the last one processed.
        self._read: dict[int, tuple[int, float | None, float]] = {}
        # Orders partition -> monotonic time since which it was found waiting with none read.
        self._waiting: dict[int, float] = {}

    def reset(self) -> None:
        """Forget everything (the table's contents are indexed again after a rebalance:
        partitions may have moved, their positions are the consumer's now)."""
        self.index.clear()
        self.in_flight.clear()
        self.pending_reevaluation.clear()
        self._read.clear()
        self._waiting.clear()

    def forget(self, partition: int, key: str) -> None:
        """Nothing is due for the customer any more (erased)."""
        self.index.schedule(partition, key, None)
        self.in_flight.pop(key, None)
        self.pending_reevaluation = [p for p in self.pending_reevaluation if p[1] != key]

    def order_read(self, record: SourceRecord) -> None:
        """Wall clock: the orders partition is read up to ``record``."""
        if self.input_end is not None:
            self._read[record.partition] = (record.offset + 1, record.timestamp, time.monotonic())

    def due_ticks(self, now: datetime) -> list[tuple[int, bytes]]:
        """Wall-clock mode: (partition, tick) for every customer due by ``now`` whose
        partition's orders have been read up to the due time (``read_until``)."""
        ticks = []
        for partition in self.index.partitions():
            until = self.read_until(partition, now)
            if until is None:
                continue
            for key, due in self.index.pop_due(partition, until):
                self.in_flight[key] = due
                ticks.append((partition, tick("due", key, until)))
        return ticks

    def read_until(self, partition: int, now: datetime) -> datetime | None:
        """Wall clock: the instant up to which the orders of ``partition`` have been read.

        ``now`` when no order is waiting (the last one processed is the partition's last), or
        when none has been processed for ``STALLED_SECONDS`` although the offsets say some are
        waiting; otherwise the timestamp of the last one processed (orders are published in
        time order, so those before it are read); None while that is not known (the consumer
        has no end offset yet, or none of the waiting orders has been processed yet)."""
        if self.input_end is None:
            return now
        position = self.input_end(partition)
        if position is None:  # paused or not known: the wait starts again once it is
            self._waiting.pop(partition, None)
            return None
        end, committed = position
        read = self._read.get(partition)
        done = max(read[0] if read else 0, committed or 0)
        if done >= end:
            self._waiting.pop(partition, None)
            return now
        since = self._waiting.setdefault(partition, time.monotonic())
        if read is not None:
            since = max(since, read[2])
        if time.monotonic() - since > STALLED_SECONDS:
            return now
        if read is None or read[1] is None:
            return None
        return min(now, datetime.fromtimestamp(read[1], UTC))

    def reevaluation_time(self, partition: int, fallback: datetime | None) -> datetime:
        """The instant a re-evaluation on ``partition`` happens at: in wall-clock mode as far
        as the partition's orders are read; in event-time mode the partition's event time
        (``fallback``, the customer's own latest instant, if the partition has none yet)."""
        if self.mode == "wall":
            wall = datetime.now(UTC)
            return self.read_until(partition, wall) or fallback or wall
        return self.index.watermarks.get(partition) or fallback or datetime.now(UTC)

    def overdue(self, now: datetime, grace: float) -> list[datetime]:
        """Due times passed more than ``grace`` seconds ago whose transition is not applied yet
        (wall clock only: in event-time mode the stream's own time decides)."""
        if self.mode != "wall":
            return []
        before = now - timedelta(seconds=grace)
        return self.index.overdue(before) + [d for d in self.in_flight.values() if d < before]

    def reevaluation_ticks(self, limit: int = 5000) -> list[tuple[int, bytes]]:
        """(partition, tick) for up to ``limit`` customers waiting for re-evaluation."""
        batch = self.pending_reevaluation[:limit]
        del self.pending_reevaluation[:limit]
        return [(partition, tick("reevaluate", key, None)) for partition, key in batch]


def tick(kind: TickKind, key: str, now: datetime | None) -> bytes:
    """A record of the clock topic."""
    return encode_tick(ClockTick(kind=kind, key=key, now=now))
