"""The segment insights' tables: each customer's insight state and each partition's totals
per shop and day (and month), in two changelog-backed tables the worker writes in its own
batches, and the copy of the changed totals to Redis every second (``streams.insights.store``)
for the API.

The worker's batch hands its activity records over at its commit (``streams.checkpoint``,
step 2), before the customers' states are written; they are added up with
``models.insights.apply_activity``, and a record whose id the customer's insight state holds
(the batch processed again after a crash) adds nothing. A partition's totals are kept under
keys that name the partition (the partition of the customer's orders), so every worker writes
only its own rows, and the API adds the partitions up. Redis gets whole rows (HSET of the
row's JSON, and the partition's count of records applied), so a write repeated after a crash
changes nothing; after a rebalance or a restart, and when Redis lost the insights, every row of
the worker's partitions is written again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import faust

from config.settings import Settings
from models.insights import (
    Activity,
    Contribution,
    CustomerInsight,
    Tally,
    Totals,
    apply_activity,
    decode_insight,
    encode_insight,
)
from streams.framework.tables import ChangelogAcks, TableStore
from streams.insights.store import row_field, shops_known, write_rows
from streams.redis_cache import REDIS_FAILURES
from streams.redis_client import connect

log = logging.getLogger(__name__)

FLUSH_SECONDS: Final = 1.0
SEP: Final = "\x1f"
# The period of a partition's row that counts the records applied to a shop's totals.
COUNT: Final = "n"


def customer_key(shop_id: str, customer_id: str) -> bytes:
    return f"{shop_id}{SEP}{customer_id}".encode()


def totals_key(partition: int, shop_id: str, period: str) -> bytes:
    return f"{partition}{SEP}{shop_id}{SEP}{period}".encode()


def split_totals_key(key: bytes) -> tuple[int, str, str]:
    partition, shop, period = key.decode().split(SEP, 2)
    return int(partition), shop, period


class Rows(NamedTuple):
    """What a batch changes in the insight tables: totals rows (partition, key, value), the
    customers' insight states, and the customers whose insight state goes (erased)."""

    totals: list[tuple[int, bytes, bytes]]
    customers: list[tuple[int, bytes, bytes]]
    erased: list[tuple[int, bytes]]


class Step(NamedTuple):
    """What one activity record changes: the customer's insight state (under its key), its
    contribution, the shop's count of records applied (key, new count; None: the record was
    applied before) and the totals rows the contribution goes to (key, row, monthly)."""

    customer: bytes
    state: CustomerInsight | None
    contribution: Contribution | None
    applied: tuple[bytes, int] | None
    rows: list[tuple[bytes, Tally, bool]]


class Insights:
    """The insight tables, and the totals rows not yet copied to Redis."""

    def __init__(self, settings: Settings, app: faust.App, customers: Any, totals: Any) -> None:
        self.settings = settings
        # Changelog records held while a batch is added up and sent together (``durable``).
        self.acks = ChangelogAcks(app)
        self.customers = TableStore(customers, self.acks)
        self.totals = TableStore(totals, self.acks)
        self.dirty: set[bytes] = set()
        self.redis: Any = None

    def add(self, activity: Sequence[tuple[int, Activity]]) -> None:
        """Add up a batch's activity records (each with its customer's partition) in the
        tables; ``durable`` then waits for their changelog records."""
        self.write(self.rows(activity))

    def rows(self, activity: Sequence[tuple[int, Activity]]) -> Rows:
        """What a batch's activity records (each with its customer's partition) change in the
        tables, written by ``write``: computed once, so a write tried again (a full disk)
        writes the same rows and counts nothing twice."""
        customers: dict[bytes, tuple[int, CustomerInsight | None]] = {}
        totals: dict[bytes, tuple[int, Tally]] = {}  # the rows changed, added up in place
        counts: dict[bytes, tuple[int, int]] = {}  # records applied, per partition and shop
        for partition, record in activity:
            try:  # everything the record changes, read first: nothing of it held on failure
                step = self._step(partition, record, customers, totals, counts)
            except Exception:  # a stored row that cannot be read: loud, and the rest goes on
                log.exception(
                    "activity record %s of customer %r skipped: its stored insights cannot be read",
                    record.id,
                    record.customer_id,
                )
                continue
            customers[step.customer] = (partition, step.state)
            if step.applied is not None:
                counts[step.applied[0]] = (partition, step.applied[1])
            for key, tally, monthly in step.rows:
                totals[key] = (partition, tally)
                if step.contribution is not None:  # always, with rows
                    tally.add(step.contribution, monthly=monthly)
        totals_rows = [
            (p, k, t.totals().model_dump_json().encode()) for k, (p, t) in totals.items()
        ]
        totals_rows += [(p, k, str(n).encode()) for k, (p, n) in counts.items()]
        puts, erased = [], []
        for ckey, (partition, state) in customers.items():
            if state is None:  # erased: a tombstone on the partition's changelog
                erased.append((partition, ckey))
            else:
                puts.append((partition, ckey, encode_insight(state)))
        return Rows(totals_rows, puts, erased)

    def write(self, rows: Rows) -> None:
        """Write what ``rows`` computed (the same rows whenever it is tried again)."""
        # The totals first: a crash between the two writes applies the records again, and the
        # customers' states (which say what was applied) are written last.
        self.totals.put_many(rows.totals)
        for partition, ckey in rows.erased:
            self.customers.delete_in(partition, ckey)
        self.customers.put_many(rows.customers)
        self.dirty.update(key for _partition, key, _value in rows.totals)

    def _step(
        self,
        partition: int,
        record: Activity,
        customers: dict[bytes, tuple[int, CustomerInsight | None]],
        totals: dict[bytes, tuple[int, Tally]],
        counts: dict[bytes, tuple[int, int]],
    ) -> Step:
        """The customer's insight state after ``record``, and the batch's count and totals
        rows it changes, read from the batch's rows or the tables (nothing changed yet)."""
        ckey = customer_key(record.shop_id, record.customer_id)
        held = customers.get(ckey)
        if held is not None:
            state = held[1]
        else:
            raw = self.customers.get(partition, ckey)
            state = None if raw is None else decode_insight(raw)
        new, contribution = apply_activity(state, record)
        if contribution is None:
            return Step(ckey, new, None, None, [])
        nkey = totals_key(partition, record.shop_id, COUNT)
        held_count = counts.get(nkey)
        count = int(self.totals.get(partition, nkey) or 0) if held_count is None else held_count[1]
        rows: list[tuple[bytes, Tally, bool]] = []
        if not contribution.empty:
            periods = ((f"d:{contribution.day}", False), (f"m:{contribution.month}", True))
            for period, monthly in periods:
                if monthly and not contribution.retained:
                    continue
                tkey = totals_key(partition, record.shop_id, period)
                current = totals.get(tkey)
                if current is None:
                    raw = self.totals.get(partition, tkey)
                    tally = Tally(None if raw is None else Totals.model_validate_json(raw))
                else:
                    tally = current[1]
                rows.append((tkey, tally, monthly))
        return Step(ckey, new, contribution, (nkey, count + 1), rows)

    async def durable(self) -> None:
        """Every changelog record of the batches added up so far is acknowledged."""
        await self.acks.wait()

    def mark_all_dirty(self) -> None:
        """Every totals row this worker holds goes to Redis again (after a rebalance)."""
        for key in list(self.totals.table.keys()):
            self.dirty.add(key)

    async def flush(self) -> int:
        """Copy the changed totals rows to Redis (all of them if Redis lost the insights);
        returns how many."""
        if self.redis is None:
            self.redis = connect(
                self.settings.redis_url.get_secret_value(), self.settings.redis_cluster
            )
        prefix = self.settings.redis_prefix
        keys: set[bytes] = set()
        try:
            if not await shops_known(self.redis, prefix):
                self.mark_all_dirty()
            if not self.dirty:
                return 0
            keys, self.dirty = self.dirty, set()
            rows: dict[str, dict[str, bytes]] = {}
            counts: dict[str, dict[str, bytes]] = {}
            for key in keys:
                partition, shop, period = split_totals_key(key)
                value = self.totals.get(partition, key)
                if value is None:
                    continue
                if period == COUNT:
                    counts.setdefault(shop, {})[str(partition)] = value
                else:
                    rows.setdefault(shop, {})[row_field(partition, period)] = value
            await write_rows(self.redis, prefix, rows, counts)
        except REDIS_FAILURES as exc:
            self.dirty |= keys
            log.warning("redis unavailable for the insights: %s", exc)
            return 0
        return len(keys)


def register(app: faust.App, settings: Settings, table: Callable[[str], Any]) -> Insights:
    """The insight tables (made by ``table``) and their Redis copy, on ``app``."""
    insights = Insights(settings, app, table("insights-customers"), table("insights-totals"))

    @insights.totals.table.on_recover
    async def write_again() -> None:
        insights.mark_all_dirty()

    @app.timer(FLUSH_SECONDS)
    async def copy_to_redis() -> None:
        await insights.flush()

    return insights
