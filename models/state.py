"""Per-customer state as stored in the table, and the metrics derived from it.

The state keeps one compact record per recent order (what the order contributed), so applying
the same event twice, in any order, or cancelling an order later all give the same result: the
state is a function of the *set* of events seen, never of their arrival order. Orders older
than the window of the ``WINDOW_ORDERS`` most recent ones are folded into ``EarlierOrders``,
incremental aggregates, so a state's size is bounded whatever the customer's history (the
bound and what an event about a folded order does: docs/known-limits.md). Every figure a rule
needs (counts, sums, averages, gaps) is derived from the records and those aggregates.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from models.events import Metrics
from models.frozen import evolve
from models.memo import IdentityMemo
from models.rules import SegmentRules
from models.scoring import Calibration, Scores, compute_scores

SCHEMA_VERSION: Final = 1
SECONDS_PER_DAY: Final = 86_400.0

# The bounds of a state (docs/known-limits.md gives the bytes they come to):
# the placed orders kept as records; older ones are folded into ``EarlierOrders``
WINDOW_ORDERS: Final = 32
# cancellations and refunds waiting for an order the state does not hold
MAX_WAITING: Final = 8
# distinct refunds of one order
MAX_REFUNDS: Final = 4
# categories kept per order record, and in the aggregates of the folded orders: the smallest
# amounts beyond these are summed under ``OTHER_CATEGORIES``
MAX_ORDER_CATEGORIES: Final = 8
MAX_CATEGORIES: Final = 16
# gaps between folded orders kept for the typical gap (the most recent ones)
MAX_EARLIER_GAPS: Final = 64
# the most bytes a stored state can take with the bounds above, every id, category and refund
# key at the input limit of 128 characters of 4 bytes each (a unit test builds that state)
MAX_STATE_BYTES: Final = 300_000
# the spend of the categories beyond the caps; never a preference tag
OTHER_CATEGORIES: Final = "(other categories)"


def capped_categories(spend: dict[str, int], limit: int) -> dict[str, int]:
    """``spend`` if it has at most ``limit`` categories, else its ``limit`` largest (ties by
    name) and the rest summed under ``OTHER_CATEGORIES`` (which is never dropped)."""
    if len(spend) <= limit:
        return spend
    other = spend.get(OTHER_CATEGORIES, 0)
    ranked = sorted(
        ((k, v) for k, v in spend.items() if k != OTHER_CATEGORIES), key=lambda kv: (-kv[1], kv[0])
    )
    keep = limit - 1
    other += sum(v for _, v in ranked[keep:])
    capped = dict(ranked[:keep])
    capped[OTHER_CATEGORIES] = other
    return capped


class OrderRecord(BaseModel):
    """What one order contributes. ``placed_at`` is None while only a cancel/refund was seen."""

    model_config = ConfigDict(frozen=True)

    placed_at: datetime | None = None
    total: int = 0
    discount: int = 0
    categories: dict[str, int] = Field(default_factory=dict)
    cancelled: bool = False
    refunds: dict[str, int] = Field(default_factory=dict)

    @property
    def refunded(self) -> int:
        return sum(self.refunds.values())

    @property
    def counts(self) -> bool:
        """Placed, not cancelled and not refunded in full."""
        if self.placed_at is None or self.cancelled:
            return False
        return self.total == 0 or self.refunded < self.total

    @property
    def net_total(self) -> int:
        return max(self.total - self.refunded, 0)


class EarlierOrders(BaseModel):
    """The orders folded out of the window, as aggregates. Every folded order is older, by
    (placed_at, order id), than every order the window holds: ``until`` and ``until_id`` are
    the newest folded one (counting or not). The figures are those of the folded orders that
    counted when they were folded."""

    model_config = ConfigDict(frozen=True)

    until: datetime
    until_id: str
    orders: int = 0
    spend: int = 0
    gross: int = 0
    discount: int = 0
    first: datetime | None = None
    last: datetime | None = None
    # distinct UTC days with an order
    days: int = 0
    # the most recent gaps between consecutive folded orders, in seconds, oldest first
    gaps: tuple[float, ...] = ()
    categories: dict[str, int] = Field(default_factory=dict)
    # the tags after the folded orders, under the tag rules they were folded with
    tags: tuple[str, ...] = ()

    def holds(self, placed_at: datetime, order_id: str) -> bool:
        """Whether an order placed at ``placed_at`` is at or before the fold's horizon."""
        return (placed_at, order_id) <= (self.until, self.until_id)


class CustomerState(BaseModel):
    """Everything stored about one customer of one shop."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    shop_id: str
    customer_id: str
    currency: str | None = None
    orders: dict[str, OrderRecord] = Field(default_factory=dict)
    # the orders folded out of the window (None: none yet)
    earlier: EarlierOrders | None = None
    segment: str | None = None
    segment_since: datetime | None = None
    # The latest instant this state reflects: newest order time or due time applied.
    as_of: datetime | None = None
    # Bumped on every change; guards the Redis cache against older state overwriting newer.
    revision: int = 0
    # The scores of the last evaluation (hysteresis needs them), the tags, and what the last
    # evaluation was made with: a newer rule set or calibration means re-evaluation.
    scores: Scores | None = None
    tags: tuple[str, ...] = ()
    rule_version: str | None = None
    calibration_version: str | None = None
    # The prediction model the segment was decided with, for rules that ask predictions.
    prediction_version: str | None = None
    # The customer's latest consent decision and when it was made (None: no record).
    consent: Literal["granted", "withdrawn"] | None = None
    consent_at: datetime | None = None

    @property
    def key(self) -> str:
        return state_key(self.shop_id, self.customer_id)

    def counted_orders(self) -> list[OrderRecord]:
        """The orders of the window that count, oldest first (ties broken by order id for
        determinism); the folded ones are in ``earlier``.

        Memoised per ``orders`` mapping (states are immutable): the scores, the tags and the
        due time of one evaluation all walk the same list. Do not modify the returned list."""
        return _COUNTED.get(self.orders, _counted_orders)

    def category_spend(self) -> dict[str, int]:
        """Spend per product category over the orders that count (minor units), largest
        first; what the caps summed is under ``OTHER_CATEGORIES``."""
        spend: dict[str, int] = dict(self.earlier.categories) if self.earlier else {}
        for record in self.counted_orders():
            for category, amount in record.categories.items():
                spend[category] = spend.get(category, 0) + amount
        return dict(sorted(spend.items(), key=lambda kv: (-kv[1], kv[0])))


class OrderFacts(NamedTuple):
    """What a customer's orders add up to, whatever the instant (see ``order_facts``)."""

    orders: int
    spend: int
    gross: int
    discount: int
    first: datetime | None
    last: datetime | None
    # The times between consecutive orders, in seconds, ascending.
    gaps: tuple[float, ...]


# Keyed by a state's ``orders`` mapping, which states derived by ``evolve`` share (and
# which is never modified): the states of one evaluation derive them once.
_FACTS: IdentityMemo[dict[str, OrderRecord], OrderFacts] = IdentityMemo()
_COUNTED: IdentityMemo[dict[str, OrderRecord], list[OrderRecord]] = IdentityMemo()


def order_facts(state: CustomerState) -> OrderFacts:
    """Counts, sums and the typical gap of the orders that count (memoised: evaluating one
    customer at several instants derives them once)."""
    recent = _FACTS.get(state.orders, _order_facts)
    earlier = state.earlier
    if earlier is None or not earlier.orders:
        return recent
    gaps = earlier.gaps
    if recent.first is not None:
        assert earlier.last is not None
        gaps += ((recent.first - earlier.last).total_seconds(),)
    return OrderFacts(
        orders=earlier.orders + recent.orders,
        spend=earlier.spend + recent.spend,
        gross=earlier.gross + recent.gross,
        discount=earlier.discount + recent.discount,
        first=earlier.first,
        last=recent.last or earlier.last,
        gaps=tuple(sorted(gaps + recent.gaps)),
    )


def utc_day(at: datetime) -> date:
    """The UTC calendar day of an instant."""
    return at.astimezone(UTC).date()


class OrderDays(NamedTuple):
    """What a BG/NBD model needs of a customer's orders that count: ``repeat_days`` (x), the
    distinct UTC days with an order after the first order's day; the first and the last of
    those days (t_x is their distance). None: no order counts."""

    repeat_days: int
    first: date
    last: date


def order_days(state: CustomerState) -> OrderDays | None:
    """The customer's order days (see ``OrderDays``), from the window and the aggregates."""
    days = sorted({utc_day(r.placed_at) for r in state.counted_orders() if r.placed_at})
    earlier = state.earlier
    if earlier is not None and earlier.first is not None and earlier.last is not None:
        recent = [d for d in days if d != utc_day(earlier.last)]
        return OrderDays(
            earlier.days - 1 + len(recent),
            utc_day(earlier.first),
            days[-1] if days else utc_day(earlier.last),
        )
    if not days:
        return None
    return OrderDays(len(days) - 1, days[0], days[-1])


def _order_facts(orders_by_id: dict[str, OrderRecord]) -> OrderFacts:
    orders = _COUNTED.get(orders_by_id, _counted_orders)
    times = [r.placed_at for r in orders if r.placed_at is not None]
    gaps = sorted((b - a).total_seconds() for a, b in itertools.pairwise(times))
    return OrderFacts(
        orders=len(orders),
        spend=sum(r.net_total for r in orders),
        gross=sum(r.total + r.discount for r in orders),
        discount=sum(r.discount for r in orders),
        first=times[0] if times else None,
        last=times[-1] if times else None,
        gaps=tuple(gaps),
    )


def typical_gap_days(gaps: tuple[float, ...], min_gap_days: float) -> float | None:
    """The median of the gaps (ascending, in seconds) of at least ``min_gap_days``: orders
    closer together than that (a basket split in two) are one visit, not a rhythm. None when
    no gap is that long (the customer has no rhythm yet)."""
    rhythm = gaps[bisect_left(gaps, min_gap_days * 86400) :]
    count = len(rhythm)
    if not count:
        return None
    middle = count // 2
    seconds = rhythm[middle] if count % 2 else (rhythm[middle - 1] + rhythm[middle]) / 2
    return _days(seconds)


def _counted_orders(orders: dict[str, OrderRecord]) -> list[OrderRecord]:
    # (time, order id) is unique: the records themselves are never compared
    items = sorted((r.placed_at, oid, r) for oid, r in orders.items() if r.counts)
    return [r for _, _, r in items]


def state_key(shop_id: str, customer_id: str) -> str:
    """The table key of a customer: customer ids are unique within a shop only."""
    return f"{shop_id}/{customer_id}"


def _days(seconds: float) -> float:
    return round(seconds / SECONDS_PER_DAY, 4)


def days_between(earlier: datetime, later: datetime) -> float:
    """Days from one instant to another, at the precision every recency figure uses."""
    return elapsed_days(later - earlier)


def elapsed_days(elapsed: timedelta) -> float:
    """Days in ``elapsed``, at the precision every recency figure uses."""
    return _days(elapsed.total_seconds())


def _rounded(days: float | None) -> float | None:
    # Same precision as days_since_last_order, so that at the due time the comparison of the
    # two is exact (an unrounded threshold could stay a hair above the rounded elapsed days).
    return None if days is None else round(days, 4)


ScoreMode = Literal["fresh", "time", "sticky"]


def compute_metrics(
    state: CustomerState,
    at: datetime,
    rules: SegmentRules,
    calibration: Calibration,
    *,
    scoring: ScoreMode = "fresh",
) -> Metrics:
    """The customer's figures and scores as of instant ``at``.

    ``scoring``: ``fresh`` scores the values as they are (after an order); ``time`` rescores
    recency only and keeps the stored F and M scores (time cannot change them); ``sticky`` keeps
    every stored score unless its value is clearly, beyond the hysteresis margin, past a
    boundary (when the cut-offs move under the customer: recalibration, rule change).
    """
    facts = order_facts(state)
    count, spend, gross, discount = facts.orders, facts.spend, facts.gross, facts.discount
    typical_gap = typical_gap_days(facts.gaps, rules.inactivity.min_gap_days)
    last = facts.last
    recency = days_between(last, at) if last else None
    scores = None
    if count:
        scores = compute_scores(
            recency if recency is not None else 0.0,
            count,
            spend,
            calibration.cutoffs,
            state.scores if scoring == "sticky" else None,
            rules.scoring.hysteresis_margin,
        )
        if scoring == "time" and state.scores is not None:
            scores = evolve(scores, f=state.scores.f, m=state.scores.m)
    return Metrics(
        currency=state.currency,
        order_count=count,
        total_spend=spend,
        average_order_value=spend // count if count else 0,
        discount_share=round(discount / gross, 4) if gross else 0.0,
        first_order_at=facts.first,
        last_order_at=last,
        recency_days=recency,
        typical_gap_days=typical_gap,
        inactive_after_days=_rounded(rules.inactivity.threshold_days(count, typical_gap)),
        r_score=scores.r if scores else None,
        f_score=scores.f if scores else None,
        m_score=scores.m if scores else None,
    )
