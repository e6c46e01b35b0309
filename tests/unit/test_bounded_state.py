"""The bounded state: orders beyond the window folded into aggregates, the caps, and the
worst-case size of a stored state."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models.fold as fold_module
from models.due import next_due
from models.fold import OrderRejected, apply_order, due_transitions, reevaluate
from models.scoring import Calibration, Cutoffs
from models.segment_model import SegmentModel, current_metrics
from models.state import (
    MAX_CATEGORIES,
    MAX_EARLIER_GAPS,
    MAX_ORDER_CATEGORIES,
    MAX_REFUNDS,
    MAX_STATE_BYTES,
    MAX_WAITING,
    OTHER_CATEGORIES,
    WINDOW_ORDERS,
    CustomerState,
    EarlierOrders,
    OrderRecord,
    order_days,
)
from tests.factories import at, cancelled, many_categories, model, placed, refunded
from tests.unit.core import MODEL, RULES, fold

UNBOUNDED = 10**9
RECALIBRATED = SegmentModel(
    RULES,
    Calibration(
        shop_id="default",
        version="recalibrated",
        method="quantile",
        cutoffs=Cutoffs(
            recency_days=(20, 60, 120, 240),
            frequency=(2, 5, 10, 30),
            monetary=(20_000, 80_000, 200_000, 500_000),
        ),
    ),
)


def stored_bytes(state: CustomerState) -> int:
    """What the table stores of a state (streams.codecs adds a header of under 100 bytes)."""
    return len(state.model_dump_json(exclude_defaults=True).encode())


def test_hostile_categories_give_a_small_state() -> None:
    events = [many_categories("hostile", n) for n in range(8)]
    assert all(len(str(e)) > 170_000 for e in events)
    state, _ = fold(events)
    size = stored_bytes(state)
    assert size < 20_000, size
    record = state.orders["o7"]
    assert len(record.categories) == MAX_ORDER_CATEGORIES
    # the largest amounts kept, the rest summed: nothing of the spend is lost
    assert sum(record.categories.values()) == events[7]["total"]
    assert record.categories[OTHER_CATEGORIES] == sum(1000 + i for i in range(993))
    assert "07" + "0999" + "x" * 122 in record.categories
    assert current_metrics(state, MODEL).total_spend == sum(e["total"] for e in events)
    assert not any(tag.startswith("prefers_other") for tag in state.tags)


def test_cancellations_with_fresh_ids_do_not_grow_the_state() -> None:
    state, _ = fold([placed("c", "o1", 0)] + [cancelled("c", f"x{n}", 1) for n in range(8)])
    assert len(state.orders) == 1 + MAX_WAITING
    with pytest.raises(OrderRejected) as caught:
        fold([cancelled("c", "x99", 2)], state)
    assert caught.value.reason == "too_many_waiting"
    # a redelivery of one that waits is no new record: not rejected
    assert fold([cancelled("c", "x3", 1)], state)[0] is state


def test_refunds_per_order_are_capped() -> None:
    events = [placed("c", "o1", 0, total=10_000)]
    events += [refunded("c", "o1", 1, 100, refund_id=f"r{n}") for n in range(MAX_REFUNDS)]
    state, _ = fold(events)
    assert len(state.orders["o1"].refunds) == MAX_REFUNDS
    with pytest.raises(OrderRejected) as caught:
        fold([refunded("c", "o1", 2, 100, refund_id="one-more")], state)
    assert caught.value.reason == "too_many_refunds"
    assert fold([refunded("c", "o1", 1, 100, refund_id="r0")], state)[0] is state


def weekly(count: int, customer: str = "c") -> list[dict[str, Any]]:
    return [placed(customer, f"o{n}", day=7 * n + (n % 3) * 0.4) for n in range(count)]


def test_the_window_keeps_the_most_recent_orders() -> None:
    state, _ = fold(weekly(WINDOW_ORDERS + 10))
    assert len(state.orders) == WINDOW_ORDERS
    assert min(state.orders, key=lambda o: int(o[1:])) == "o10"
    earlier = state.earlier
    assert earlier is not None
    assert (earlier.orders, earlier.until_id, earlier.until) == (10, "o9", at(63))
    assert (earlier.first, earlier.last, earlier.spend) == (at(0), at(63), 50_000)


def test_events_about_folded_orders() -> None:
    """A redelivered order older than the window changes nothing; a cancellation of one
    waits like one of an unseen order and never reverses the folded figures."""
    state, _ = fold(weekly(WINDOW_ORDERS + 10))
    assert fold([placed("c", "o3", day=21)], state)[0] is state
    # an order never seen but placed before the fold's horizon is taken as folded too
    assert fold([placed("c", "late", day=5)], state)[0] is state
    figures = current_metrics(state, MODEL)
    after, _ = fold([cancelled("c", "o3", 400)], state)
    assert after.orders["o3"] == OrderRecord(cancelled=True)
    assert current_metrics(after, MODEL).total_spend == figures.total_spend
    assert current_metrics(after, MODEL).order_count == figures.order_count


def _observed(state: CustomerState, transitions: list[Any]) -> Any:
    later = (state.as_of or at(0)) + timedelta(days=200)
    aged, timed = due_transitions(state, later, MODEL)
    moved, recalibrated = reevaluate(state, RECALIBRATED, later)
    return (
        state.segment,
        state.segment_since,
        state.tags,
        state.scores,
        state.revision,
        current_metrics(state, MODEL),
        next_due(state, MODEL),
        order_days(state),
        [t.model_dump() for t in transitions + timed],
        (aged.segment, aged.tags, current_metrics(aged, MODEL)),
        [t.model_dump() for t in recalibrated],
        (moved.segment, moved.scores, current_metrics(moved, RECALIBRATED)),
    )


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """40 to 90 orders at random gaps and categories, with cancellations and refunds of
    recent orders (always within the window)."""
    count = draw(st.integers(WINDOW_ORDERS + 8, WINDOW_ORDERS + MAX_EARLIER_GAPS - 6))
    day = 0.0
    events: list[dict[str, Any]] = []
    for n in range(count):
        day += draw(st.sampled_from((0.1, 0.9, 3.0, 7.5, 14.0, 30.0, 61.0)))
        category = draw(st.sampled_from(("shoes", "bags", "hats", "coats")))
        discount = draw(st.sampled_from((0, 0, 500, 2500)))
        total = draw(st.integers(1000, 20_000))
        events.append(placed("c", f"o{n}", day, total, discount, category))
        follow = draw(st.sampled_from(("none", "none", "none", "cancel", "refund", "dup")))
        if follow == "cancel":
            events.append(cancelled("c", f"o{n}", day + 0.05))
        elif follow == "refund":
            events.append(refunded("c", f"o{n}", day + 0.05, total // 2 + 1))
        elif follow == "dup":
            events.append(events[-1])
    return events


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_folding_changes_no_figure_segment_tag_or_transition(events: list[dict[str, Any]]) -> None:
    """Within the caps (gaps, categories), the bounded state decides exactly what the state
    holding every order decides: same figures, scores, segment, tags, due time, order days
    and transitions (ids included), also when time passes afterwards or the cut-offs move."""
    bounded, moves = fold(events)
    assert bounded.earlier is not None
    original = fold_module.WINDOW_ORDERS
    fold_module.WINDOW_ORDERS = UNBOUNDED
    try:
        full, full_moves = fold(events)
    finally:
        fold_module.WINDOW_ORDERS = original
    assert full.earlier is None
    assert _observed(bounded, moves) == _observed(full, full_moves)


def test_order_days_count_distinct_utc_days_after_the_first() -> None:
    # two orders on 2025-01-01 (one late in the day in UTC), then days 1, 1, 3
    events = [placed("c", "a", 0), placed("c", "b", 0.4), placed("c", "c", 1)]
    events += [placed("c", "d", 1.1), placed("c", "e", 3), cancelled("c", "e", 3.1)]
    state, _ = fold(events)
    assert order_days(state) == (1, date(2025, 1, 1), date(2025, 1, 2))
    # a long history; the last folded order is of the same day as the window's first, o10
    history = [*weekly(WINDOW_ORDERS + 10), placed("c", "same-day", 70.1)]
    many, _ = fold(history)
    assert many.earlier is not None and many.earlier.until_id == "same-day"
    assert min(many.orders, key=lambda o: many.orders[o].placed_at or at(0)) == "o10"
    utc_days = sorted({datetime.fromisoformat(e["occurred_at"]).date() for e in history})
    assert len(utc_days) == WINDOW_ORDERS + 10  # "same-day" adds no day
    assert order_days(many) == (len(utc_days) - 1, utc_days[0], utc_days[-1])
    assert order_days(CustomerState(shop_id="default", customer_id="c")) is None


def _widest(n: int) -> str:
    """A 128-character id of 4-byte characters, distinct per ``n``: the most bytes an id,
    category or refund key can take in JSON."""
    return f"{n:04d}".translate(str.maketrans("0123456789", "🀀🀁🀂🀃🀄🀅🀆🀇🀈🀉")) + "🂠" * 124


def test_the_largest_possible_state_is_within_the_documented_bound() -> None:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    big = 10**10
    n = iter(range(10_000))

    def record(placed_at: datetime | None) -> OrderRecord:
        return OrderRecord(
            placed_at=placed_at,
            total=big,
            discount=big,
            categories={_widest(next(n)): big for _ in range(MAX_ORDER_CATEGORIES)},
            cancelled=True,
            refunds={_widest(next(n)): big for _ in range(MAX_REFUNDS)},
        )

    orders = {_widest(next(n)): record(when + timedelta(days=i)) for i in range(WINDOW_ORDERS)}
    orders |= {_widest(next(n)): record(None) for _ in range(MAX_WAITING)}
    earlier = EarlierOrders(
        until=when,
        until_id=_widest(next(n)),
        orders=big,
        spend=big * big,
        gross=big * big,
        discount=big * big,
        first=when,
        last=when,
        days=big,
        gaps=tuple(123456789.123456 + i for i in range(MAX_EARLIER_GAPS)),
        categories={_widest(next(n)): big * big for _ in range(MAX_CATEGORIES)},
        tags=tuple(f"prefers_{'x' * 128}{i}" for i in range(MAX_CATEGORIES + 2)),
    )
    state, _ = apply_order(None, model(placed("c", "o", 0)), MODEL)
    worst = state.model_copy(
        update={
            "shop_id": "🀀" * 64,
            "customer_id": _widest(next(n)),
            "orders": orders,
            "earlier": earlier,
            "tags": tuple(f"prefers_{'x' * 128}{i}" for i in range(MAX_CATEGORIES + 2)),
        }
    )
    size = stored_bytes(worst)
    assert size <= MAX_STATE_BYTES, size
    assert size > MAX_STATE_BYTES * 0.8  # the bound is not far off the worst case either


def test_the_tags_of_folded_orders_keep_their_hysteresis() -> None:
    """A discount share that fell into the hysteresis band (under the 20 % that adds
    discount_seeker, above the 15 % that removes it) before the orders were folded keeps the
    tag, as the full history does."""
    events = [placed("c", f"o{n}", 7 * n, total=7500, discount=2500) for n in range(10)]
    events += [placed("c", f"o{n}", 7 * n, total=8300, discount=1700) for n in range(10, 100)]
    state, _ = fold(events)
    assert state.earlier is not None and state.earlier.orders == 100 - WINDOW_ORDERS
    assert 0.15 < current_metrics(state, MODEL).discount_share < 0.20
    assert "discount_seeker" in state.tags
    assert state.earlier.tags == state.tags
