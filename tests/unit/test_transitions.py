"""The pure core: folding orders into state, segments, time-caused transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from config.rules import load_rules
from models.rules import BEST_CUSTOMER, INACTIVE, LOW_AOV, NEW, RETURNING
from models.state import compute_metrics
from models.transitions import OrderRejected, apply_order, due_transitions, next_due
from tests.factories import at, cancelled, model, placed, refunded

RULES = load_rules()


def fold(events, state=None):  # type: ignore[no-untyped-def]
    transitions = []
    for event in events:
        state, emitted = apply_order(state, model(event), RULES)
        transitions += emitted
    return state, transitions


def test_first_order_makes_a_new_customer() -> None:
    state, transitions = fold([placed("c1", "o1", 0, total=4200)])
    assert state.segment == NEW
    assert state.segment_since == at(0)
    assert [
        (t.from_segment, t.to_segment, t.cause.kind, t.cause.order_id) for t in transitions
    ] == [(None, NEW, "order_placed", "o1")]
    t = transitions[0]
    assert t.transition == "customer.became_new"
    assert t.metrics_before is None
    assert t.metrics_after.order_count == 1
    assert t.metrics_after.total_spend == 4200
    assert t.rule_version == RULES.version


def test_second_order_makes_a_returning_customer() -> None:
    state, transitions = fold([placed("c1", "o1", 0), placed("c1", "o2", 10)])
    assert state.segment == RETURNING
    assert [t.to_segment for t in transitions] == [NEW, RETURNING]
    assert transitions[1].metrics_before.order_count == 1  # type: ignore[union-attr]
    assert transitions[1].metrics_after.order_count == 2


def test_best_customer_needs_frequency_spend_and_full_price() -> None:
    full_price = [placed("c1", f"o{i}", i * 10, total=12_000) for i in range(4)]
    state, transitions = fold(full_price)
    assert state.segment == BEST_CUSTOMER
    assert transitions[-1].cause.order_id == "o3"
    discounted = [placed("c2", f"o{i}", i * 10, total=9_000, discount=3_000) for i in range(4)]
    state, _ = fold(discounted)
    assert state.segment == RETURNING  # 25% of the value came from discounts


def test_small_baskets_bought_often_are_low_average_order_value() -> None:
    state, _ = fold([placed("c1", f"o{i}", i * 7, total=1_500) for i in range(30)])
    metrics = compute_metrics(state, state.as_of, RULES)  # type: ignore[arg-type]
    assert metrics.total_spend == 45_000  # above the best-customer spend, still small baskets
    assert metrics.average_order_value == 1_500
    assert state.segment == LOW_AOV


def test_applying_an_order_twice_changes_nothing() -> None:
    once, _t1 = fold([placed("c1", "o1", 0), placed("c1", "o2", 5)])
    twice, t2 = fold([placed("c1", "o2", 5)], state=once)
    assert twice == once
    assert t2 == []


def test_cancel_reverses_the_order_and_customer_leaves_all_segments() -> None:
    state, transitions = fold([placed("c1", "o1", 0), cancelled("c1", "o1", 1)])
    assert state.segment is None
    assert transitions[-1].to_segment is None
    assert transitions[-1].transition == "customer.left_all_segments"
    assert compute_metrics(state, at(1), RULES).order_count == 0


def test_cancel_before_place_gives_the_same_records_as_place_then_cancel() -> None:
    a, _ = fold([placed("c1", "o1", 0), placed("c1", "o2", 3), cancelled("c1", "o1", 4)])
    b, _ = fold([cancelled("c1", "o1", 4), placed("c1", "o2", 3), placed("c1", "o1", 0)])
    assert a.orders == b.orders
    assert a.segment == b.segment == NEW
    assert compute_metrics(a, at(4), RULES) == compute_metrics(b, at(4), RULES)


def test_refunds_reduce_spend_once_and_a_full_refund_removes_the_order() -> None:
    state, _ = fold(
        [
            placed("c1", "o1", 0, total=10_000),
            placed("c1", "o2", 2, total=3_000),
            refunded("c1", "o1", 3, 4_000, refund_id="r1"),
            refunded("c1", "o1", 3, 4_000, refund_id="r1"),  # redelivered
            refunded("c1", "o2", 4, 3_000),
        ]
    )
    m = compute_metrics(state, at(4), RULES)
    assert (m.order_count, m.total_spend, m.average_order_value) == (1, 6_000, 6_000)


def test_currency_change_is_rejected() -> None:
    state, _ = fold([placed("c1", "o1", 0)])
    with pytest.raises(OrderRejected) as info:
        apply_order(state, model(placed("c1", "o2", 1, currency="USD")), RULES)
    assert info.value.reason == "currency_mismatch"


def test_inactivity_follows_the_customers_own_rhythm() -> None:
    weekly, _ = fold([placed("w", f"o{i}", i * 7) for i in range(6)])
    # weekly buyer: 3 x 7 days = 21 days after the last order (day 35)
    assert next_due(weekly, RULES) == at(35 + 21)
    monthly, _ = fold([placed("m", f"o{i}", i * 60) for i in range(3)])
    # every 60 days: 3 x 60 = 180 days after day 120
    assert next_due(monthly, RULES) == at(120 + 180)
    once, _ = fold([placed("o", "o1", 0)])
    assert next_due(once, RULES) == at(RULES.inactivity.single_order_days)


def test_inactivity_is_bounded_by_floor_and_ceiling() -> None:
    daily, _ = fold([placed("d", f"o{i}", i) for i in range(5)])
    assert next_due(daily, RULES) == at(4 + RULES.inactivity.floor_days)
    rare, _ = fold([placed("r", f"o{i}", i * 300) for i in range(3)])
    assert next_due(rare, RULES) == at(600 + RULES.inactivity.ceiling_days)


def test_time_fires_exactly_at_the_due_time_and_only_once() -> None:
    state, _ = fold([placed("c1", "o1", 0), placed("c1", "o2", 10)])
    due = next_due(state, RULES)
    assert due == at(10 + 30)
    early, none = due_transitions(state, due - timedelta(seconds=1), RULES)  # type: ignore[operator]
    assert none == [] and early == state
    later, fired = due_transitions(state, due + timedelta(days=3), RULES)  # type: ignore[operator]
    assert [(t.from_segment, t.to_segment, t.cause.kind, t.event_time) for t in fired] == [
        (RETURNING, INACTIVE, "time", due)
    ]
    again, fired_again = due_transitions(later, due + timedelta(days=5), RULES)  # type: ignore[operator]
    assert fired_again == [] and again == later
    assert next_due(later, RULES) is None


def test_an_order_after_the_due_time_first_settles_time_then_reactivates() -> None:
    state, transitions = fold(
        [placed("c1", "o1", 0), placed("c1", "o2", 10), placed("c1", "o3", 100)]
    )
    assert [(t.from_segment, t.to_segment, t.cause.kind) for t in transitions[-2:]] == [
        (RETURNING, INACTIVE, "time"),
        (INACTIVE, RETURNING, "order_placed"),
    ]
    assert transitions[-2].event_time == at(40)
    assert state.segment == RETURNING


def test_transition_ids_are_deterministic_and_distinct() -> None:
    events = [placed("c1", "o1", 0), placed("c1", "o2", 10), placed("c1", "o3", 100)]
    _, first = fold(events)
    _, second = fold(events)
    assert [t.event_id for t in first] == [t.event_id for t in second]
    assert len({t.event_id for t in first}) == len(first)


def test_shops_keep_separate_customers() -> None:
    a, _ = fold([placed("c1", "o1", 0, shop="shop-a")])
    b, _ = fold([placed("c1", "o1", 0, shop="shop-b")])
    assert a.key == "shop-a/c1" and b.key == "shop-b/c1"
