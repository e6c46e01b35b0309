"""Segment insights: what the worker's activity records add up to per shop, per UTC day and per
segment (customers entering and leaving, flows between segments, orders, revenue) and per
calendar month (retention), as pure folds.

The worker publishes one activity record per applied order event (with the move it caused)
and per segment move of another cause (see ``docs/insights.md``). Each customer's records
arrive in the order the worker produced them;
``apply_activity`` takes a customer's insight state and one record and returns the new state
and what the record adds to the totals. A record whose id the customer's state already holds
adds nothing (records are delivered at least once).

Definitions:
- an order is attributed to the segment the customer was in when ordering (``segment_before``);
  a customer's first order, made in no segment, to the segment it put them in;
- revenue is net: placed totals minus refunds and the totals of cancelled orders, each on its
  own day and in the segment of that moment; ``orders`` counts placed orders;
- retention of segment S in month M: of the customers in S at the start of M (00:00 UTC of its
  first day), the share who placed an order during M. The cohort is the segment's size at the
  start of the month (from the daily entries and exits), the retained count is kept per
  customer: the first order of the month of a customer whose segment at the month's start
  was S counts once for S.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field

from models.ids import uuid5_text

ACTIVITY_NAMESPACE: Final = uuid.UUID("3b8f0e52-9c41-5d7a-8e16-2a4c7d9b0f63")
_ACTIVITY_NAMESPACE_BYTES: Final = ACTIVITY_NAMESPACE.bytes
# Ids of records already applied, per customer: a redelivery replays a recent stretch. Kept
# as their first 48 bits (UUIDs: hashes), so a customer's insight state stays small.
REMEMBERED_IDS: Final = 64
ID_CHARS: Final = 12


def short_id(record_id: str) -> str:
    """What a customer's insight state keeps of a record id."""
    return record_id.replace("-", "")[:ID_CHARS]


OrderKind = Literal["order_placed", "order_cancelled", "order_refunded"]


class Activity(NamedTuple):
    """One activity record: an applied order event (``kind="order"``), with the segments before
    and after it (the move it caused, if they differ), or a segment move of another cause
    (``kind="move"``: time, a recalibration, a rule change, consent, an erasure). ``at`` is the
    instant of the change (the customer's newest event time, as a transition's
    ``event_time``). Built by the worker from values the fold checked (a plain tuple: one per
    applied order)."""

    id: str
    kind: Literal["move", "order"]
    shop_id: str
    customer_id: str
    at: datetime
    # moves
    from_segment: str | None = None
    to_segment: str | None = None
    cause: str | None = None
    # orders
    order_type: OrderKind | None = None
    order_id: str | None = None
    segment_before: str | None = None
    segment_after: str | None = None
    amount: int = 0
    currency: str | None = None
    # false for a placed order that does not count (cancelled or refunded before it arrived)
    counted: bool = True

    @property
    def attributed_segment(self) -> str | None:
        """The segment an order counts for: the one the customer was in when ordering."""
        return self.segment_before if self.segment_before is not None else self.segment_after


def order_activity_id(shop_id: str, customer_id: str, kind: str, event_key: str) -> str:
    """The id of an order event's activity record: the same whenever it is produced again."""
    name = "\x1f".join((shop_id, customer_id, kind, event_key))
    return uuid5_text(_ACTIVITY_NAMESPACE_BYTES, name)


class CustomerInsight(NamedTuple):
    """What the insights keep of one customer: the current segment, the month of the latest
    record with the segment held at its start and whether an order of it was counted, and the
    ids of the latest records applied (stored as JSON: ``encode_insight``, ``decode_insight``)."""

    segment: str | None = None
    month: str | None = None
    month_start_segment: str | None = None
    retained: bool = False
    seen: tuple[str, ...] = ()


class _StoredInsight(BaseModel):
    """A stored ``CustomerInsight``, as validated when read."""

    segment: str | None = None
    month: str | None = None
    month_start_segment: str | None = None
    retained: bool = False
    seen: tuple[str, ...] = ()


def encode_insight(customer: CustomerInsight) -> bytes:
    """A customer's insight state as stored (a JSON object of its fields)."""
    return orjson.dumps(customer._asdict())


def decode_insight(raw: bytes) -> CustomerInsight:
    """A stored insight state, validated (raises ``pydantic.ValidationError``)."""
    stored = _StoredInsight.model_validate_json(raw)
    return CustomerInsight(
        stored.segment, stored.month, stored.month_start_segment, stored.retained, stored.seen
    )


# The categories a contribution leaves out: read-only, shared.
_NONE: Final[Mapping[str, int]] = MappingProxyType({})


class Contribution(NamedTuple):
    """What one record adds to the totals: to day ``day`` (entries, exits, flows, orders,
    revenue) and to month ``month`` (retained customers)."""

    day: str
    month: str
    entered: Mapping[str, int] = _NONE
    left: Mapping[str, int] = _NONE
    flows: Mapping[str, int] = _NONE
    orders: Mapping[str, int] = _NONE
    revenue: Mapping[str, int] = _NONE
    retained: Mapping[str, int] = _NONE

    @property
    def empty(self) -> bool:
        return not (
            self.entered or self.left or self.flows or self.orders or self.revenue or self.retained
        )


class Totals(BaseModel):
    """A shop's totals of one day (or, for ``retained``, one month): counts per segment,
    flows per ``from>to`` (``-`` for no segment), revenue per ``segment|currency``."""

    model_config = ConfigDict(frozen=True)

    entered: dict[str, int] = Field(default_factory=dict)
    left: dict[str, int] = Field(default_factory=dict)
    flows: dict[str, int] = Field(default_factory=dict)
    orders: dict[str, int] = Field(default_factory=dict)
    revenue: dict[str, int] = Field(default_factory=dict)
    retained: dict[str, int] = Field(default_factory=dict)


_NO_TOTALS: Final = Totals()
NO_SEGMENT: Final = "-"


def day_of(at: datetime) -> str:
    """The UTC day of an instant, ``YYYY-MM-DD``."""
    return at.astimezone(UTC).date().isoformat()


def month_of(at: datetime) -> str:
    """The UTC calendar month of an instant, ``YYYY-MM``."""
    return at.astimezone(UTC).strftime("%Y-%m")


def flow_key(from_segment: str | None, to_segment: str | None) -> str:
    return f"{from_segment or NO_SEGMENT}>{to_segment or NO_SEGMENT}"


def revenue_key(segment: str, currency: str | None) -> str:
    return f"{segment}|{currency or ''}"


def apply_activity(
    customer: CustomerInsight | None, record: Activity
) -> tuple[CustomerInsight | None, Contribution | None]:
    """The customer's insight state after ``record`` and what the record adds to the totals
    (None: nothing, as for a record applied before). A move out of every segment caused by an
    erasure leaves no state behind."""
    erasure = record.kind == "move" and record.to_segment is None and record.cause == "erasure"
    if customer is None and erasure:  # erased already (a replay), or never counted in
        return None, None
    current = customer or CustomerInsight()
    rid = short_id(record.id)
    if rid in current.seen:
        return customer, None
    day = day_of(record.at)
    month = day[:7]
    start = current.month_start_segment
    retained = current.retained
    if current.month != month:  # the first record of a month: the segment held at its start
        start, retained = current.segment, False
    segment = current.segment
    entered: dict[str, int] = {}
    left: dict[str, int] = {}
    flows: dict[str, int] = {}
    orders: dict[str, int] = {}
    revenue: dict[str, int] = {}
    retained_now: dict[str, int] = {}
    if record.kind == "move":
        moved_from, moved_to = record.from_segment, record.to_segment
    else:  # an order event carries the move it caused, if any
        moved_from, moved_to = record.segment_before, record.segment_after
    if moved_from != moved_to:
        if moved_from is not None:
            left[moved_from] = 1
        if moved_to is not None:
            entered[moved_to] = 1
        flows[flow_key(moved_from, moved_to)] = 1
    segment = moved_to
    if record.kind == "order":
        attributed = record.attributed_segment
        if attributed is not None:
            if record.order_type == "order_placed" and record.counted:
                orders[attributed] = 1
                revenue[revenue_key(attributed, record.currency)] = record.amount
            elif record.amount:
                revenue[revenue_key(attributed, record.currency)] = -record.amount
        if record.order_type == "order_placed" and record.counted and not retained:
            retained = True
            if start is not None:
                retained_now[start] = 1
    contribution = Contribution(
        day=day,
        month=month,
        entered=entered,
        left=left,
        flows=flows,
        orders=orders,
        revenue=revenue,
        retained=retained_now,
    )
    if erasure:
        return None, contribution
    new = CustomerInsight(segment, month, start, retained, (*current.seen, rid)[-REMEMBERED_IDS:])
    return new, contribution


class Tally:
    """A totals row being added up: mutable, so a batch adds its contributions to each row in
    place and builds the row (``totals``) once."""

    __slots__ = ("entered", "flows", "left", "orders", "retained", "revenue")

    def __init__(self, base: Totals | None = None) -> None:
        base = base or _NO_TOTALS
        self.entered = dict(base.entered)
        self.left = dict(base.left)
        self.flows = dict(base.flows)
        self.orders = dict(base.orders)
        self.revenue = dict(base.revenue)
        self.retained = dict(base.retained)

    def add(self, contribution: Contribution, *, monthly: bool) -> None:
        """Add a contribution to the day's row (``monthly``: the month's)."""
        if monthly:
            _into(self.retained, contribution.retained)
            return
        _into(self.entered, contribution.entered)
        _into(self.left, contribution.left)
        _into(self.flows, contribution.flows)
        _into(self.orders, contribution.orders)
        _into(self.revenue, contribution.revenue)

    def totals(self) -> Totals:
        # the values are this fold's own, of the fields' types: built without validation
        return Totals.model_construct(
            entered=dict(self.entered),
            left=dict(self.left),
            flows=dict(self.flows),
            orders=dict(self.orders),
            revenue=dict(self.revenue),
            retained=dict(self.retained),
        )


def add(totals: Totals | None, contribution: Contribution, *, monthly: bool) -> Totals:
    """The day's totals (``monthly``: the month's) with a contribution added."""
    tally = Tally(totals)
    tally.add(contribution, monthly=monthly)
    return tally.totals()


def _into(into: dict[str, int], more: Mapping[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


def _sum(a: dict[str, int], b: Mapping[str, int]) -> dict[str, int]:
    if not b:
        return a
    out = dict(a)
    _into(out, b)
    return out


def merge(parts: list[Totals]) -> Totals:
    """Totals of several partitions added up."""
    out = Totals()
    for part in parts:
        out = Totals(
            entered=_sum(out.entered, part.entered),
            left=_sum(out.left, part.left),
            flows=_sum(out.flows, part.flows),
            orders=_sum(out.orders, part.orders),
            revenue=_sum(out.revenue, part.revenue),
            retained=_sum(out.retained, part.retained),
        )
    return out


# -- reading the totals -------------------------------------------------------------------------


class SegmentHistory(BaseModel):
    """A segment's size at the end of each day, from the daily entries and exits."""

    model_config = ConfigDict(frozen=True)

    days: list[str]
    sizes: dict[str, list[int]]


def size_history(days: dict[str, Totals], segments: list[str]) -> SegmentHistory:
    """Each segment's size at the end of every day that has totals, in day order."""
    ordered = sorted(days)
    sizes: dict[str, list[int]] = {s: [] for s in segments}
    running = dict.fromkeys(segments, 0)
    for day in ordered:
        totals = days[day]
        for segment in segments:
            running[segment] += totals.entered.get(segment, 0) - totals.left.get(segment, 0)
            sizes[segment].append(running[segment])
    return SegmentHistory(days=ordered, sizes=sizes)


def sizes_before(days: dict[str, Totals], day: str, segments: list[str]) -> dict[str, int]:
    """Each segment's size at the start of ``day`` (``YYYY-MM-DD``)."""
    sizes = dict.fromkeys(segments, 0)
    for d, totals in days.items():
        if d < day:
            for segment in segments:
                sizes[segment] += totals.entered.get(segment, 0) - totals.left.get(segment, 0)
    return sizes


def in_period(days: dict[str, Totals], start: date, end: date) -> Totals:
    """The totals of the days from ``start`` to ``end``, both included."""
    first, last = start.isoformat(), end.isoformat()
    return merge([t for d, t in days.items() if first <= d <= last])


class Retention(BaseModel):
    """Retention of one segment in one month."""

    model_config = ConfigDict(frozen=True)

    month: str
    segment: str
    customers_at_start: int
    ordered_again: int
    rate: float | None


def retention(
    days: dict[str, Totals], months: dict[str, Totals], month: str, segments: list[str]
) -> list[Retention]:
    """Each segment's retention in ``month`` (``YYYY-MM``): see the module's definition."""
    cohort = sizes_before(days, f"{month}-01", segments)
    retained = months.get(month, Totals()).retained
    out = []
    for segment in segments:
        start, again = cohort[segment], retained.get(segment, 0)
        rate = round(again / start, 4) if start else None
        out.append(Retention(month=month, segment=segment, customers_at_start=start,
                             ordered_again=again, rate=rate))  # fmt: skip
    return out
