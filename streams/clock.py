"""Due times: which customer changes segment when, kept per partition so the work per tick grows
with the number of customers due, not with the number of customers."""

from __future__ import annotations

import heapq
from collections import defaultdict
from datetime import datetime


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
