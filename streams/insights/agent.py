"""The insights agent: reads the activity topic, keeps each customer's insight state and each
partition's totals per shop and day (and month) in two changelog-backed tables, and copies
the changed totals to Redis every second (``streams.insights.store``) for the API.

Records are applied with ``models.insights.apply_activity``; a record whose id the customer's
state holds (a redelivery) adds nothing. A batch's changelog records are sent and
acknowledged before its offsets are (``ChangelogAcks``, as the worker's own tables). A
partition's totals are kept under keys that name the partition, so every worker writes only
its own rows, and the API adds the partitions up. Redis gets whole rows (HSET of the row's
JSON, and the partition's count of records applied), so a write repeated after a crash
changes nothing; after a rebalance or a restart, and when Redis lost the insights, every row
of the worker's partitions is written again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import faust

from config.settings import Settings
from models.insights import CustomerInsight, Totals, add, apply_activity
from streams.framework import intake
from streams.framework.tables import ChangelogAcks, TableStore
from streams.insights.records import ActivityDecodeError, decode_activity
from streams.insights.store import row_field, shops_known, write_rows
from streams.redis_cache import REDIS_FAILURES
from streams.redis_client import connect

log = logging.getLogger(__name__)

FLUSH_SECONDS: Final = 1.0
BATCH_RECORDS: Final = 1000
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


class Insights:
    """The agent's state: its tables, and the totals rows not yet copied to Redis."""

    def __init__(self, settings: Settings, app: faust.App, customers: Any, totals: Any) -> None:
        self.settings = settings
        # Changelog records held while a batch is applied and sent together; the batch's
        # offsets are acknowledged once the broker has them (``written``).
        self.acks = ChangelogAcks(app)
        self.customers = TableStore(customers, self.acks)
        self.totals = TableStore(totals, self.acks)
        self.dirty: set[bytes] = set()
        self.redis: Any = None

    def apply(self, messages: list[Any], activate: Callable[[Any], None]) -> None:
        """Apply a batch of activity records (the consumer's messages) to the tables;
        ``activate`` makes a message the one a table write is made as of (None: none)."""
        customers: dict[bytes, tuple[int, CustomerInsight | None, Any]] = {}
        totals: dict[bytes, tuple[int, Totals]] = {}
        counts: dict[bytes, tuple[int, int]] = {}  # records applied, per partition and shop
        for message in messages:
            try:
                record = decode_activity(message.value)
            except ActivityDecodeError as exc:
                log.warning(
                    "activity record %s[%d]@%d skipped: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    exc,
                )
                continue
            try:  # everything the record changes, read first: nothing of it held on failure
                step = self._step(message.partition, record, customers, totals, counts)
            except Exception:  # a stored row that cannot be read: loud, and the rest goes on
                log.exception(
                    "activity record %s[%d]@%d skipped: its stored insights cannot be read",
                    message.topic,
                    message.partition,
                    message.offset,
                )
                continue
            ckey, new, changes = step
            customers[ckey] = (message.partition, new, message)
            for held, key, value in changes:
                held[key] = (message.partition, value)
        # The totals first: a crash between the two writes applies the records again, and the
        # customers' states (which say what was applied) are written last.
        self.totals.put_many([(p, k, t.model_dump_json().encode()) for k, (p, t) in totals.items()])
        self.totals.put_many([(p, k, str(n).encode()) for k, (p, n) in counts.items()])
        puts = []
        for ckey, (partition, state, message) in customers.items():
            if state is None:
                activate(message)  # a tombstone on the changelog, as of this record
                self.customers.pop(ckey)
            else:
                puts.append((partition, ckey, state.model_dump_json().encode()))
        activate(None)
        self.customers.put_many(puts)
        self.dirty.update(totals)
        self.dirty.update(counts)

    def _step(
        self,
        partition: int,
        record: Any,
        customers: dict[bytes, tuple[int, CustomerInsight | None, Any]],
        totals: dict[bytes, tuple[int, Totals]],
        counts: dict[bytes, tuple[int, int]],
    ) -> tuple[bytes, CustomerInsight | None, list[tuple[dict[bytes, Any], bytes, Any]]]:
        """The customer's insight state after ``record``, and the batch's totals and counts
        it changes (their dict, key and new value), from the batch's rows or the tables."""
        ckey = customer_key(record.shop_id, record.customer_id)
        held = customers.get(ckey)
        if held is not None:
            state = held[1]
        else:
            raw = self.customers.get(partition, ckey)
            state = None if raw is None else CustomerInsight.model_validate_json(raw)
        new, contribution = apply_activity(state, record)
        changes: list[tuple[dict[bytes, Any], bytes, Any]] = []
        if contribution is None:
            return ckey, new, changes
        nkey = totals_key(partition, record.shop_id, COUNT)
        held_count = counts.get(nkey)
        count = int(self.totals.get(partition, nkey) or 0) if held_count is None else held_count[1]
        changes.append((counts, nkey, count + 1))
        if contribution.empty:
            return ckey, new, changes
        periods = ((f"d:{contribution.day}", False), (f"m:{contribution.month}", True))
        for period, monthly in periods:
            if monthly and not contribution.retained:
                continue
            tkey = totals_key(partition, record.shop_id, period)
            current = totals.get(tkey)
            if current is None:
                raw = self.totals.get(partition, tkey)
                base = None if raw is None else Totals.model_validate_json(raw)
            else:
                base = current[1]
            changes.append((totals, tkey, add(base, contribution, monthly=monthly)))
        return ckey, new, changes

    async def written(self) -> None:
        """Every changelog record of the batches applied so far is acknowledged."""
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


class Batches(Protocol):
    """Where the agent's batches come from (``streams.framework.intake.Buffer``)."""

    def activate(self, message: Any | None) -> None: ...

    def ack(self, messages: Iterable[Any]) -> None: ...

    def forget(self, messages: Iterable[Any]) -> None: ...


async def add_batch(
    insights: Any, source: Batches, messages: list[Any], stop: Callable[[BaseException], None]
) -> None:
    """Apply a batch and acknowledge it once its changelog records are. A batch whose
    changelog records the broker refused stops the worker (``stop``), as the worker's own
    batches do: the local tables then hold writes the changelog lacks, and an agent restarted
    in place would go on past the batch, whose offsets could never be committed. A restart
    rebuilds the tables from the changelog and reads the batch again."""
    try:
        insights.apply(messages, source.activate)
    except BaseException:
        source.forget(messages)  # nothing of it acknowledged: read again
        raise
    try:
        await insights.written()
    except Exception as exc:
        source.forget(messages)
        stop(exc)
        raise
    except BaseException:
        source.forget(messages)
        raise
    source.ack(messages)


def register(
    app: faust.App,
    settings: Settings,
    table: Callable[[str], Any],
    stop: Callable[[BaseException], None],
) -> Insights:
    """The insights agent, its tables (made by ``table``) and its Redis copy, on ``app``;
    ``stop`` ends the worker after a batch the broker refused to take."""
    insights = Insights(settings, app, table("insights-customers"), table("insights-totals"))
    source = app.topic(settings.activity_topic, key_serializer="raw", value_serializer="raw")
    # The records reach the agent through a buffer, without Faust's per-record events (as
    # the worker's inputs do: ``streams.app``).
    buffer = intake.Buffer(app, [settings.activity_topic], 4 * BATCH_RECORDS)

    @app.agent(source, name="segmenter.insights")
    async def add_up(stream: faust.StreamT) -> None:
        async for messages in buffer.batches(BATCH_RECORDS, 0.0):
            await add_batch(insights, buffer, messages, stop)

    @insights.totals.table.on_recover
    async def write_again() -> None:
        insights.mark_all_dirty()

    @app.timer(FLUSH_SECONDS)
    async def copy_to_redis() -> None:
        await insights.flush()

    return insights
