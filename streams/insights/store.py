"""The Redis copy of the segment insights, and the reads the API makes of Redis.

Layout (``<p>`` is the configured prefix):

- ``<p>{<shop>:insights}:totals``: hash, one field per partition and day or month of the
  worker's totals (``<partition>:d:<YYYY-MM-DD>``, ``<partition>:m:<YYYY-MM>``), whose value is
  the JSON of ``models.insights.Totals``; written whole (idempotent) by the worker holding
  the partition;
- ``<p>{<shop>:insights}:version``: hash, per partition the number of records the partition's
  totals of the shop add up (their sum changes whenever the totals do: the dashboard's live
  updates watch it; written whole as well, so a Redis refilled from the tables has the same);
- ``<p>insights:shops``: set of the shops that have totals.

The customers' hashes and segment sets are the cache's (``streams.redis_cache``): segment
sizes, members and one customer are read from there, so an erased customer, whom the worker
removed from the cache, is never found.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from models.insights import Totals, merge
from streams.redis_cache import RedisCache
from streams.redis_layout import BUCKETS, bucket

SHOPS_KEY: Final = "insights:shops"
# KEYS: customer hashes of one bucket; ARGV: field names. The fields of each hash, in order.
READ_MANY_SCRIPT: Final = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], unpack(ARGV)) end
return out
"""
# How old the segment sizes the API answers may be.
SIZES_TTL_SECONDS: Final = 1.0


def totals_key(prefix: str, shop_id: str) -> str:
    return f"{prefix}{{{shop_id}:insights}}:totals"


def version_key(prefix: str, shop_id: str) -> str:
    return f"{prefix}{{{shop_id}:insights}}:version"


def row_field(partition: int, period: str) -> str:
    """``period``: ``d:<day>`` or ``m:<month>``."""
    return f"{partition}:{period}"


async def write_rows(
    client: Any,
    prefix: str,
    rows: dict[str, dict[str, bytes]],
    counts: dict[str, dict[str, bytes]],
) -> None:
    """Write totals rows (per shop, field -> the JSON of its totals, the whole row) and record
    counts (per shop, partition -> count)."""
    if not rows and not counts:
        return
    async with client.pipeline(transaction=False) as pipe:
        for shop, fields in rows.items():
            pipe.hset(totals_key(prefix, shop), mapping=fields)
        for shop, fields in counts.items():
            pipe.hset(version_key(prefix, shop), mapping=fields)
        for shop in rows.keys() | counts.keys():
            pipe.sadd(f"{prefix}{SHOPS_KEY}", shop)
        await pipe.execute()


async def shops_known(client: Any, prefix: str) -> bool:
    """Whether Redis has the insights' shops (not: it lost its data, or nothing was written)."""
    return bool(await client.exists(f"{prefix}{SHOPS_KEY}"))


@dataclass(frozen=True)
class ShopTotals:
    """A shop's totals over every partition: per day and per month."""

    days: dict[str, Totals]
    months: dict[str, Totals]
    version: int


@dataclass(frozen=True)
class MemberPage:
    """Members of a segment, and the cursor of the next page (None: the last page)."""

    members: list[str]
    cursor: str | None


class InsightsReader:
    """The API's reads of Redis."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        segments: Iterable[str] = (),
        sizes_ttl: float = SIZES_TTL_SECONDS,
    ) -> None:
        """``client``: a Redis client (``streams.redis_client.connect``); the customer cache's
        reads go through a ``RedisCache`` on it."""
        self.client = client
        self.cache = RedisCache(client, prefix, segments=segments)
        self._read_many = client.register_script(READ_MANY_SCRIPT)
        self.prefix = prefix
        self.sizes_ttl = sizes_ttl
        # A shop's totals as last read, with the version they were read at (reread when the
        # version moves); its segment sizes with the time they were read.
        self._totals: dict[str, ShopTotals] = {}
        self._sizes: dict[str, tuple[float, dict[str, int]]] = {}

    async def shops(self) -> list[str]:
        found = await self.client.smembers(f"{self.prefix}{SHOPS_KEY}")
        return sorted(s.decode() for s in found)

    async def version(self, shop_id: str) -> int:
        counts = await self.client.hgetall(version_key(self.prefix, shop_id))
        return sum(int(n) for n in counts.values())

    async def totals(self, shop_id: str) -> ShopTotals:
        """The shop's totals, read again only when its version moved."""
        held = self._totals.get(shop_id)
        if held is not None and held.version == await self.version(shop_id):
            return held
        read = await self._read_totals(shop_id)
        self._totals[shop_id] = read
        return read

    async def _read_totals(self, shop_id: str) -> ShopTotals:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(totals_key(self.prefix, shop_id))
            pipe.hgetall(version_key(self.prefix, shop_id))
            raw, counts = await pipe.execute()
        days: dict[str, list[Totals]] = {}
        months: dict[str, list[Totals]] = {}
        for field, value in raw.items():
            _partition, kind, period = field.decode().split(":", 2)
            target = days if kind == "d" else months
            target.setdefault(period, []).append(Totals.model_validate_json(value))
        return ShopTotals(
            days={d: merge(parts) for d, parts in days.items()},
            months={m: merge(parts) for m, parts in months.items()},
            version=sum(int(n) for n in counts.values()),
        )

    async def sizes(self, shop_id: str, segments: Iterable[str]) -> dict[str, int]:
        """Each segment's current size, at most ``sizes_ttl`` seconds old (counting a segment
        takes one SCARD per bucket)."""
        names = tuple(segments)
        held = self._sizes.get(shop_id)
        now = time.monotonic()
        if held is not None and now - held[0] < self.sizes_ttl and tuple(held[1]) == names:
            return held[1]
        sizes = await self.cache.segment_sizes(shop_id, names)
        self._sizes[shop_id] = (now, sizes)
        return sizes

    async def members(
        self, shop_id: str, segment: str, cursor: str | None, limit: int
    ) -> MemberPage:
        """Up to ``limit`` members, from ``cursor`` on (``<bucket>.<scan cursor>.<skip>``): the
        segment's sets are scanned bucket by bucket (SSCAN), so a page costs about ``limit``
        members' worth of work whatever the segment's size. Members that join or leave while
        pages are read may be missed or seen twice, as with any SSCAN."""
        b, scan, skip = _parse_cursor(cursor)
        keys = self.cache.segment_keys(shop_id, segment)
        out: list[str] = []
        while b < BUCKETS and len(out) < limit:
            next_scan, found = await self.client.sscan(keys[b], scan, count=limit)
            batch = sorted(m.decode() for m in found)[skip:]
            room = limit - len(out)
            if len(batch) > room:  # the rest of this scan step starts the next page
                out.extend(batch[:room])
                return MemberPage(out, f"{b}.{scan}.{skip + room}")
            out.extend(batch)
            skip = 0
            if int(next_scan) == 0:
                b, scan = b + 1, 0
            else:
                scan = int(next_scan)
        return MemberPage(out, None if b >= BUCKETS else f"{b}.{scan}.0")

    async def customer(self, shop_id: str, customer_ref: str) -> dict[str, str]:
        return await self.cache.read_customer(shop_id, customer_ref)

    async def customers(
        self, shop_id: str, refs: list[str], fields: tuple[str, ...]
    ) -> list[dict[str, str]]:
        """Some fields of several customers' hashes (a member page's rows), in order; {} for
        one not found. One script call per bucket (its keys share a slot): a page costs a
        call or two, not a command per customer."""
        groups: dict[int, list[int]] = {}
        for index, ref in enumerate(refs):
            groups.setdefault(bucket(ref), []).append(index)
        rows: list[dict[str, str]] = [{} for _ in refs]
        for indexes in groups.values():
            keys = [self.cache.customer_key(shop_id, refs[i]) for i in indexes]
            found = await self._read_many(keys=keys, args=list(fields))
            for i, values in zip(indexes, found, strict=True):
                rows[i] = {
                    name: value.decode()
                    for name, value in zip(fields, values, strict=True)
                    if value is not None
                }
        return rows


class BadCursor(ValueError):
    """A member page cursor that is not one this API gave."""


def _parse_cursor(cursor: str | None) -> tuple[int, int, int]:
    if not cursor:
        return 0, 0, 0
    try:
        b, scan, skip = (int(part) for part in cursor.split("."))
    except ValueError as exc:
        raise BadCursor(f"not a page cursor: {cursor!r}") from exc
    if not (0 <= b <= BUCKETS and scan >= 0 and skip >= 0):
        raise BadCursor(f"not a page cursor: {cursor!r}")
    return b, scan, skip
