"""The Redis cache of every customer's current segment, key metrics and segment membership.

Layout (``<p>`` is the configured prefix, ``segmenter:`` by default):

- ``<p>customer:<shop>:<customer>``: hash of the customer's segment, ``segment_since``,
  ``revision`` and key metrics;
- ``<p>segment:<shop>:<segment>``: set of the customer ids currently in that segment.

Writes go through a Lua script that takes up to ``WRITE_CHUNK`` customers as one JSON argument
(one command per chunk instead of one per customer, which is what the client's command packing
and reply parsing cost): for each customer the script refuses a write whose revision is older
than the stored one, so older state never overwrites newer, and it moves the membership in the
same atomic step. A write of the same revision wins: a replay after
a crash can decide a revision again, and the table holds what was decided last. Redis is a
cache of the table: a failed write is kept and retried, never raised into the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Final

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from models.events import Metrics
from models.state import CustomerState

log = logging.getLogger(__name__)

_REMOVE_SCRIPT: Final = """
local segment = redis.call('HGET', KEYS[1], 'segment')
if segment and segment ~= '' then
  redis.call('SREM', ARGV[1] .. segment, ARGV[2])
end
return redis.call('DEL', KEYS[1])
"""

_WRITE_SCRIPT: Final = """
local items = cjson.decode(ARGV[1])
local written = 0
for i = 1, #items do
  local key, revision, segment, sets, member, fields = unpack(items[i])
  local current = redis.call('HGET', key, 'revision')
  if not (current and tonumber(current) > tonumber(revision)) then
    local old = redis.call('HGET', key, 'segment')
    if old and old ~= '' and old ~= segment then
      redis.call('SREM', sets .. old, member)
    end
    if segment ~= '' then
      redis.call('SADD', sets .. segment, member)
    end
    redis.call('HSET', key, 'revision', revision, 'segment', segment, unpack(fields))
    written = written + 1
  end
end
return written
"""
# Customers per script call: each call is one atomic step of Redis, which serves nothing else
# meanwhile (about a millisecond per 500 customers).
WRITE_CHUNK: Final = 500


def _instant(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _number(value: float | None) -> str:
    return "" if value is None else str(value)


class RedisCache:
    """Writes and reads the cache layout above."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        observe: Callable[[float, bool], None] = lambda _seconds, _ok: None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._observe = observe
        self._script = client.register_script(_WRITE_SCRIPT)
        self._remove_script = client.register_script(_REMOVE_SCRIPT)
        # Latest state per customer whose write failed; retried by ``flush_pending``.
        self._pending: dict[str, tuple[CustomerState, Metrics]] = {}
        # Customers to remove once Redis answers again (retried before the pending writes).
        self._pending_removals: set[tuple[str, str]] = set()
        self.errors = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        observe: Callable[[float, bool], None] = lambda _seconds, _ok: None,
    ) -> RedisCache:
        """``observe(seconds, ok)`` is called after every write (for metrics)."""
        client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, prefix, observe)

    def customer_key(self, shop_id: str, customer_id: str) -> str:
        return f"{self._prefix}customer:{shop_id}:{customer_id}"

    def segment_key(self, shop_id: str, segment: str) -> str:
        return f"{self._prefix}segment:{shop_id}:{segment}"

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pending_removals)

    async def write(self, items: Iterable[tuple[CustomerState, Metrics]]) -> None:
        """Write these states, a script call per chunk; on failure keep them for the next flush."""
        batch = {state.key: (state, metrics) for state, metrics in items}
        if not batch:
            return
        started = time.perf_counter()
        try:
            await self._write_batch(list(batch.values()))
            self._observe(time.perf_counter() - started, True)
        except (RedisError, OSError) as exc:
            self._observe(time.perf_counter() - started, False)
            self.errors += 1
            log.warning("redis write of %d customers failed, will retry: %s", len(batch), exc)
            for key, item in batch.items():
                held = self._pending.get(key)
                if held is None or held[0].revision < item[0].revision:
                    self._pending[key] = item

    async def remove(self, shop_id: str, customer_id: str) -> bool:
        """Delete the customer's hash and segment membership (no consent, or erased); drops a
        pending write of the customer so it cannot bring them back. False if Redis failed."""
        key = self.customer_key(shop_id, customer_id)
        self._pending.pop(f"{shop_id}/{customer_id}", None)
        try:
            await self._remove_script(
                keys=[key], args=[f"{self._prefix}segment:{shop_id}:", customer_id]
            )
            return True
        except (RedisError, OSError) as exc:
            self.errors += 1
            self._pending_removals.add((shop_id, customer_id))
            log.warning("redis removal of a customer failed, will retry: %s", exc)
            return False

    async def flush_pending(self) -> int:
        """Retry the removals and writes that failed; returns how many are still pending."""
        removals, self._pending_removals = self._pending_removals, set()
        for shop_id, customer_id in removals:
            key = (shop_id, customer_id)
            held = self._pending.pop(f"{shop_id}/{customer_id}", None)
            await self.remove(shop_id, customer_id)
            if held is not None and key not in self._pending_removals:
                self._pending[f"{shop_id}/{customer_id}"] = held  # written after the removal
        if self._pending:
            pending, self._pending = self._pending, {}
            await self.write(pending.values())
        return len(self._pending)

    async def _write_batch(self, items: list[tuple[CustomerState, Metrics]]) -> None:
        for start in range(0, len(items), WRITE_CHUNK):
            chunk = [
                (
                    self.customer_key(state.shop_id, state.customer_id),
                    str(state.revision),
                    state.segment or "",
                    f"{self._prefix}segment:{state.shop_id}:",
                    state.customer_id,
                    self._fields(state, metrics),
                )
                for state, metrics in items[start : start + WRITE_CHUNK]
            ]
            await self._script(keys=[], args=[orjson.dumps(chunk)])

    @staticmethod
    def _fields(state: CustomerState, m: Metrics) -> list[str]:
        """The hash fields: name, value, name, value ... (all strings)."""
        top = list(state.category_spend())[:3]
        # Often the very same instant (a new customer's four are one): written out once.
        since, as_of, first, last = (
            state.segment_since,
            state.as_of,
            m.first_order_at,
            m.last_order_at,
        )
        as_of_text = _instant(as_of)
        since_text = as_of_text if since is as_of else _instant(since)
        last_text = as_of_text if last is as_of else since_text if last is since else _instant(last)
        first_text = last_text if first is last else _instant(first)
        return [
            "shop_id", state.shop_id,
            "customer_id", state.customer_id,
            "segment_since", since_text,
            "as_of", as_of_text,
            "currency", m.currency or "",
            "order_count", str(m.order_count),
            "total_spend", str(m.total_spend),
            "average_order_value", str(m.average_order_value),
            "discount_share", str(m.discount_share),
            "first_order_at", first_text,
            "last_order_at", last_text,
            "recency_days", _number(m.recency_days),
            "typical_gap_days", _number(m.typical_gap_days),
            "inactive_after_days", _number(m.inactive_after_days),
            "r_score", _number(m.r_score),
            "f_score", _number(m.f_score),
            "m_score", _number(m.m_score),
            "tags", orjson.dumps(list(state.tags)).decode(),
            "top_categories", orjson.dumps(top).decode(),
            "rule_version", state.rule_version or "",
            "calibration_version", state.calibration_version or "",
        ]  # fmt: skip

    async def read_customer(self, shop_id: str, customer_id: str) -> dict[str, str]:
        raw = await self._client.hgetall(self.customer_key(shop_id, customer_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def segment_sizes(self, shop_id: str, segments: Iterable[str]) -> dict[str, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            names = list(segments)
            for name in names:
                pipe.scard(self.segment_key(shop_id, name))
            sizes = await pipe.execute()
        return dict(zip(names, (int(s) for s in sizes), strict=True))

    async def members(self, shop_id: str, segment: str) -> set[str]:
        return {m.decode() for m in await self._client.smembers(self.segment_key(shop_id, segment))}

    def marker_key(self, group: str, partition: int) -> str:
        """Set once a partition's customers are all in Redis; gone after a flush or a restart
        of a Redis without persistence, which is how a worker knows to write them again."""
        return f"{self._prefix}synced:{group}:{partition}"

    async def missing_markers(self, group: str, partitions: Iterable[int]) -> list[int]:
        """Partitions whose customers must be written again (Redis lost them)."""
        partitions = sorted(partitions)
        if not partitions:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.exists(self.marker_key(group, partition))
            found = await pipe.execute()
        return [p for p, exists in zip(partitions, found, strict=True) if not exists]

    async def set_marker(self, group: str, partition: int) -> None:
        await self._client.set(self.marker_key(group, partition), "1")

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()
