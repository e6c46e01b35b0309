"""Values computed from immutable objects, remembered by the objects' identity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")

# Entries of a memo used within the processing of one event (a few per event). Every entry
# keeps its object alive: a memo much larger than its use keeps tens of thousands of dead
# states for the collector to walk and out of the processor's caches, which slows the fold.
EVENT_MEMO_SIZE: Final = 256


class IdentityMemo(Generic[K, T]):
    """Values computed from one immutable object (a state, its orders, a rule set), for the
    objects seen last.

    A hit on the very same object is exact; an entry holds its object, so the object's id
    cannot be reused while the entry lives. Bounded: cleared when full."""

    def __init__(self, size: int = EVENT_MEMO_SIZE) -> None:
        self._entries: dict[int, tuple[K, T]] = {}
        self._size = size

    def get(self, key: K, compute: Callable[[K], T]) -> T:
        hit = self._entries.get(id(key))
        if hit is not None and hit[0] is key:
            return hit[1]
        value = compute(key)
        self.put(key, value)
        return value

    def put(self, key: K, value: T) -> None:
        """Remember a value already known (computed along with the object)."""
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
