"""The Redis cache of every customer's current segment, key metrics and segment membership.

Layout (``<p>`` is the configured prefix, ``segmenter:`` by default; ``<b>`` is the customer's
bucket, ``0`` to ``BUCKETS - 1``, from a CRC-32 of the customer id):

- ``<p>{<shop>:<b>}:customer:<customer>``: hash of the customer's segment, ``segment_since``,
  ``revision`` and key metrics;
- ``<p>{<shop>:<b>}:segment:<segment>``: set of the ids of the bucket's customers currently in
  that segment (a segment's members are the union over the buckets, its size the sum);
- ``<p>synced:<LAYOUT>:<group>:<partition>``: a partition's customers are all written.

The braces are a Redis Cluster hash tag: a shop's bucket lives in one slot, so one script call
can write many of its customers atomically on a single Redis and on a cluster alike. Writes are
grouped by bucket, one Lua script call per group (up to ``WRITE_CHUNK`` customers), which
declares every key it touches in KEYS: for each customer the script refuses a write whose
revision is older than the stored one, so older state never overwrites newer, and it moves the
membership in the same atomic step. A write of the same revision wins: a replay after a crash
can decide a revision again, and the table holds what was decided last. Redis is a cache of the
table: a failed write is kept and retried, never raised into the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)

from models.events import Metrics
from models.state import CustomerState
from streams.redis_client import acl_rules, connect
from streams.redis_layout import (
    BUCKETS,
    DECLARE_ATTEMPTS,
    LAYOUT,
    REMOVE_SCRIPT,
    WRITE_CHUNK,
    WRITE_SCRIPT,
    bucket,
)

log = logging.getLogger(__name__)

# What Redis failing looks like to a caller (a cluster client's own errors are no RedisError).
REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError)


def _instant(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _number(value: float | None) -> str:
    return "" if value is None else str(value)


@dataclass
class _GroupCall:
    """A write script call: customers of one bucket, the keys it declares, its argument."""

    items: list[tuple[CustomerState, Metrics]]
    hashes: list[str]
    sets: str
    payload: bytes
    named: set[str]  # segments whose sets it declares

    def keys(self) -> list[str]:
        return self.hashes + [self.sets + name for name in sorted(self.named)]


class RedisCache:
    """Writes and reads the cache layout above, on a single Redis or a Redis Cluster."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        observe: Callable[[float, bool], None] = lambda _seconds, _ok: None,
        segments: Iterable[str] = (),
    ) -> None:
        """``segments``: the rules' segment names, whose sets every write declares (a stored
        segment not among them costs one more call, with its set declared)."""
        self._client = client
        self._prefix = prefix
        self._observe = observe
        self._segments = frozenset(segments)
        self._script = client.register_script(WRITE_SCRIPT)
        self._remove_script = client.register_script(REMOVE_SCRIPT)
        # Latest state per customer whose write failed; retried by ``flush_pending``.
        self._pending: dict[str, tuple[CustomerState, Metrics]] = {}
        # Customers to remove once Redis answers again (retried before the pending writes),
        # with the partition whose erasures table stores the pending removal (None: kept in
        # memory only). ``journal`` stores them (``streams.removals.RemovalJournal``).
        self._pending_removals: dict[tuple[str, str], int | None] = {}
        self.journal: Any = None
        self._refusal: str | None = None  # the last refusal logged, so it is logged once
        self.errors = 0
        # More hash fields computed from the state when it is written (the predictions).
        self.extra_fields: Callable[[CustomerState], list[str]] = lambda _state: []

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        observe: Callable[[float, bool], None] = lambda _seconds, _ok: None,
        *,
        cluster: bool = False,
        segments: Iterable[str] = (),
    ) -> RedisCache:
        """``observe(seconds, ok)`` is called after every write (for metrics)."""
        return cls(connect(url, cluster), prefix, observe, segments)

    def _tag(self, shop_id: str, customer_id: str) -> str:
        return f"{self._prefix}{{{shop_id}:{bucket(customer_id)}}}:"

    def customer_key(self, shop_id: str, customer_id: str) -> str:
        return f"{self._tag(shop_id, customer_id)}customer:{customer_id}"

    def segment_keys(self, shop_id: str, segment: str) -> list[str]:
        """The segment's set in every bucket of the shop."""
        return [f"{self._prefix}{{{shop_id}:{b}}}:segment:{segment}" for b in range(BUCKETS)]

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pending_removals)

    async def write(self, items: Iterable[tuple[CustomerState, Metrics]]) -> None:
        """Write these states, a script call per bucket, all calls in one pipeline (on a
        cluster, one per node); keep those that failed for the next flush."""
        batch = {state.key: (state, metrics) for state, metrics in items}
        if not batch:
            return
        if self._pending_removals:
            await self._remove_before(batch)
            if not batch:
                return
        groups: dict[tuple[str, int], list[tuple[CustomerState, Metrics]]] = {}
        for state, metrics in batch.values():
            where = (state.shop_id, bucket(state.customer_id))
            groups.setdefault(where, []).append((state, metrics))
        calls = [
            self._group_call(group[start : start + WRITE_CHUNK])
            for group in groups.values()
            for start in range(0, len(group), WRITE_CHUNK)
        ]
        started = time.perf_counter()
        failures = await self._write_calls(calls)
        self._observe(time.perf_counter() - started, not failures)
        if not failures:
            return
        self.errors += 1
        failed = [item for call, _exc in failures for item in call.items]
        first = failures[0][1]
        self._note_refusal(first)
        log.warning("redis write of %d customers failed, will retry: %s", len(failed), first)
        for state, metrics in failed:
            held = self._pending.get(state.key)
            if held is None or held[0].revision < state.revision:
                self._pending[state.key] = (state, metrics)

    def _group_call(self, items: list[tuple[CustomerState, Metrics]]) -> _GroupCall:
        """The script call for customers of one bucket of one shop (one slot)."""
        first = items[0][0]
        tag = self._tag(first.shop_id, first.customer_id)
        payload = orjson.dumps(
            [
                [index, str(state.revision), state.segment or "", state.customer_id, fields]
                for index, (state, metrics) in enumerate(items, start=1)
                for fields in [self._fields(state, metrics) + self.extra_fields(state)]
            ]
        )
        return _GroupCall(
            items=items,
            hashes=[f"{tag}customer:{state.customer_id}" for state, _m in items],
            sets=f"{tag}segment:",
            payload=payload,
            named=set(self._segments) | {s.segment for s, _m in items if s.segment},
        )

    async def _write_calls(self, calls: list[_GroupCall]) -> list[tuple[_GroupCall, Exception]]:
        """Run the calls; again those that met a stored segment whose set they did not
        declare, with it declared. Returns the calls that failed, with their error."""
        failures: list[tuple[_GroupCall, Exception]] = []
        for _attempt in range(DECLARE_ATTEMPTS):
            requests = [(call.keys(), [call.payload, call.sets]) for call in calls]
            results = await self._evalsha_all(self._script, requests)
            again = []
            for call, result in zip(calls, results, strict=True):
                if isinstance(result, REDIS_FAILURES):
                    failures.append((call, result))
                elif isinstance(result, Exception):
                    raise result  # a bug, not Redis: loud
                elif result[1]:
                    call.named |= {name.decode() for name in result[1]}
                    again.append(call)
            if not again:
                return failures
            calls = again
        moving = RedisError("customers kept moving to segments not declared")
        return failures + [(call, moving) for call in calls]

    async def _evalsha_all(
        self, script: Any, requests: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """``script`` with each (keys, args): results or errors, in order. Loads the script
        where a node does not know it (a restart, a failover) and runs those calls again."""
        results = await self._evalsha_each(script, requests)
        if any(isinstance(r, NoScriptError) for r in results):
            try:
                await self._client.script_load(script.script)  # on every primary
            except REDIS_FAILURES as exc:
                return [exc] * len(requests)
            results = await self._evalsha_each(script, requests)
        return results

    async def _evalsha_each(
        self, script: Any, requests: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        if isinstance(self._client, RedisCluster):
            # A cluster pipeline refuses EVALSHA, and concurrent first calls of redis-py's
            # cluster client break its connections (8.1): one call after another.
            results: list[Any] = []
            for keys, args in requests:
                try:
                    results.append(await self._client.evalsha(script.sha, len(keys), *keys, *args))
                except REDIS_FAILURES as exc:
                    results.append(exc)
            return results
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in requests:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                return list(await pipe.execute(raise_on_error=False))
        except REDIS_FAILURES as exc:
            return [exc] * len(requests)

    async def _remove_before(self, batch: dict[str, tuple[CustomerState, Metrics]]) -> None:
        """A pending removal of a customer goes first: a removal applied after a newer write
        (consent given again) would delete what the write brought. The writes of customers
        whose removal still fails wait with it (out of ``batch``)."""
        for shop_id, customer_id in list(self._pending_removals):
            item = batch.get(f"{shop_id}/{customer_id}")
            if item is None:
                continue
            partition = self._pending_removals[shop_id, customer_id]
            if not await self.remove(shop_id, customer_id, partition):
                del batch[item[0].key]
                self._pending[item[0].key] = item

    def pend_removal(self, shop_id: str, customer_id: str, partition: int | None) -> None:
        """A removal to make once Redis answers (one stored before a restart)."""
        self._pending_removals[shop_id, customer_id] = partition

    def restore_removals(self) -> int:
        """After the tables' recovery: the pending removals the erasures table stores (made
        before a crash, or by the partitions' previous worker); returns how many."""
        if self.journal is None:
            return 0
        count = 0
        for partition, shop_id, customer_id in self.journal.stored():
            self.pend_removal(shop_id, customer_id, partition)
            count += 1
        return count

    async def remove(self, shop_id: str, customer_id: str, partition: int | None = None) -> bool:
        """Delete the customer's hash and segment membership (no consent, or erased); drops a
        pending write of the customer so it cannot bring them back. False if Redis failed:
        then the removal is pending, stored in the erasures table of ``partition`` (the
        partition of the record that asked for it) so that it survives a crash."""
        tag = self._tag(shop_id, customer_id)
        sets = f"{tag}segment:"
        self._pending.pop(f"{shop_id}/{customer_id}", None)
        named = set(self._segments)
        try:
            for _attempt in range(DECLARE_ATTEMPTS):
                keys = [f"{tag}customer:{customer_id}"] + [sets + n for n in sorted(named)]
                stored = await self._remove_script(keys=keys, args=[sets, customer_id])
                if not stored:
                    break
                named.add(stored.decode())
            else:
                raise RedisError(f"the customer kept moving to undeclared segments: {named}")
        except REDIS_FAILURES as exc:
            self.errors += 1
            self._note_refusal(exc)
            held = self._pending_removals.get((shop_id, customer_id))
            where = partition if partition is not None else held
            self._pending_removals[shop_id, customer_id] = where
            if self.journal is not None and where is not None:
                self.journal.add(where, shop_id, customer_id)
            log.warning("redis removal of a customer failed, will retry: %s", exc)
            return False
        self._pending_removals.pop((shop_id, customer_id), None)
        if self.journal is not None:
            self.journal.done(shop_id, customer_id)
        return True

    async def flush_pending(self) -> int:
        """Retry the removals and writes that failed; returns how many are still pending."""
        for (shop_id, customer_id), partition in list(self._pending_removals.items()):
            key = f"{shop_id}/{customer_id}"
            held = self._pending.pop(key, None)
            await self.remove(shop_id, customer_id, partition)
            if held is not None:  # written after the removal (and waits for it)
                self._pending[key] = held
        if self._pending:
            pending, self._pending = self._pending, {}
            await self.write(pending.values())
        return self.pending

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
        """Each segment's size: the sum of its sets' sizes over the shop's buckets."""
        names = list(segments)
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                for key in self.segment_keys(shop_id, name):
                    pipe.scard(key)
            sizes = [int(size) for size in await pipe.execute()]
        return {name: sum(sizes[i * BUCKETS : (i + 1) * BUCKETS]) for i, name in enumerate(names)}

    async def members(self, shop_id: str, segment: str) -> set[str]:
        """The segment's members: the union of its sets over the shop's buckets."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key in self.segment_keys(shop_id, segment):
                pipe.smembers(key)
            sets = await pipe.execute()
        return {member.decode() for found in sets for member in found}

    def marker_key(self, group: str, partition: int) -> str:
        """Set once a partition's customers are all in Redis; gone after a flush or a restart
        of a Redis without persistence, which is how a worker knows to write them again (and
        absent after a change of ``LAYOUT``, which has them written in the new one)."""
        return f"{self._prefix}synced:{LAYOUT}:{group}:{partition}"

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
        """Redis answers and lets the cache run its write script on its keys (an empty call,
        which writes nothing): false when writes could not succeed."""
        try:
            await self._client.ping()
            probe = f"{self._prefix}{{readiness}}:probe"
            await self._script(keys=[probe], args=[b"[]", f"{probe}:"])
        except REDIS_FAILURES as exc:
            self._note_refusal(exc)
            return False
        self._refusal = None
        return True

    def _note_refusal(self, exc: BaseException) -> None:
        """Log once, as an error, that Redis refuses the cache's user (a wrong password, or an
        ACL without a command or key the cache needs): retrying will not help."""
        if not isinstance(exc, NoPermissionError | AuthenticationError):
            return
        message = str(exc)
        if message != self._refusal:
            self._refusal = message
            log.error(
                "Redis refuses the cache's commands, so writes wait until it allows them: %s "
                "(the Redis user needs the ACL rules: %s)",
                message,
                acl_rules(self._prefix),
            )

    async def close(self) -> None:
        await self._client.aclose()
