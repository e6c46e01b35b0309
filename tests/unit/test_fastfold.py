"""Differential tests of the fold's fast path (``models.fastfold``) against the reference.

Two worlds get the same random streams of order events (duplicates, cancellations, refunds
and orders in another currency among them), time steps, re-evaluations, recalibrations, rule
changes, consent decisions and erasures: one folds every order with
``apply_order_reference``, the other with ``apply_order`` (the fast path where it applies).
After every step both must hold identical states (values, fields set, field order, stored
JSON), have emitted identical transitions (ids included), give the same due time and the same
Redis figures, and reject the same orders for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models.fastfold as fastfold
import models.fold as fold
from models.due import next_due, remember_due
from models.events import CONSENT_EVENT, ERASURE_EVENT, OrderEventT, Transition
from models.fold import (
    OrderRejected,
    apply_consent,
    apply_order,
    apply_order_reference,
    due_transitions,
    erase,
    reevaluate,
)
from models.rules import Condition, SegmentRule, SegmentRules, Tags, bounds_matched
from models.scoring import Calibration, Cutoffs
from models.segment_model import SegmentModel, current_metrics
from models.state import WINDOW_ORDERS, CustomerState
from tests.factories import at, cancelled, model, placed, refunded
from tests.unit.core import MODEL, RULES

Apply = Callable[
    [CustomerState | None, OrderEventT, SegmentModel], tuple[CustomerState, list[Transition]]
]

# Rule sets the streams switch between: the rule file's, one without a minimum dwell and with
# other tag settings, one with other segment bounds.
RULE_SETS = (
    RULES,
    RULES.model_copy(
        update={
            "version": "no-dwell",
            "scoring": RULES.scoring.model_copy(update={"min_dwell_days": 0}),
            "tags": Tags(preference_top_n=1, preference_min_orders=1, price_min_orders=1),
        }
    ),
    RULES.model_copy(
        update={
            "version": "bounds",
            "segments": (
                SegmentRule(name="bargain", when=Condition(min_discount_share=0.3)),
                SegmentRule(name="small", when=Condition(max_average_order_value=3000)),
                *RULES.segments,
            ),
        }
    ),
)
CUTOFFS = (
    MODEL.calibration.cutoffs,
    Cutoffs(
        recency_days=(10, 20, 45, 90), frequency=(1, 2, 4, 6), monetary=(2000, 5000, 9000, 20000)
    ),
    Cutoffs(recency_days=(3, 3, 7, 30), frequency=(1, 1, 2, 3), monetary=(0, 100, 100, 50000)),
)
CUSTOMERS = ("c1", "c2")
CATEGORIES = ("shoes", "bags", "socks", "hats", "belts", "coats", "gloves", "scarves", "ties")

days = st.floats(min_value=0, max_value=500, allow_nan=False).map(lambda d: round(d, 3))
customers = st.sampled_from(CUSTOMERS)
order_ids = st.integers(min_value=0, max_value=14).map(lambda i: f"o{i}")
line = st.tuples(
    st.sampled_from(CATEGORIES),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=20_000),
)
lines = st.lists(line, min_size=0, max_size=10)


@st.composite
def placed_events(draw: st.DrawFn) -> tuple[str, ...] | Any:
    event = placed(
        draw(customers),
        draw(order_ids),
        draw(days),
        total=draw(st.integers(min_value=0, max_value=60_000)),
        discount=draw(st.integers(min_value=0, max_value=5_000)),
        currency=draw(st.sampled_from(("EUR", "EUR", "EUR", "USD"))),
    )
    event["lines"] = [
        {"sku": f"s{i}", "category": category, "quantity": quantity, "unit_price": price}
        for i, (category, quantity, price) in enumerate(draw(lines))
    ]
    return ("order", model(event))


steps = st.one_of(
    placed_events(),
    placed_events(),
    placed_events(),
    st.builds(lambda c, o, d: ("order", model(cancelled(c, o, d))), customers, order_ids, days),
    st.builds(
        lambda c, o, d, total, key: ("order", model(refunded(c, o, d, total, key))),
        customers,
        order_ids,
        days,
        st.integers(min_value=1, max_value=40_000),
        st.sampled_from((None, "r1", "r2")),
    ),
    st.tuples(st.just("time"), customers, days),
    st.tuples(st.just("reevaluate"), customers, days),
    st.tuples(st.just("recalibrate"), st.integers(min_value=0, max_value=len(CUTOFFS) - 1)),
    st.tuples(st.just("rules"), st.integers(min_value=0, max_value=len(RULE_SETS) - 1)),
    st.tuples(st.just("consent"), customers, st.booleans(), days),
    st.tuples(st.just("erase"), customers, days),
)


@dataclass
class World:
    """One worker's view: its models and the states it keeps (stored as JSON, read back)."""

    apply: Apply
    consent_required: bool
    rules: SegmentRules = RULES
    cutoffs: int = 0
    model: SegmentModel = field(init=False)
    states: dict[str, CustomerState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.remodel()

    def remodel(self) -> None:
        version = "bootstrap" if not self.cutoffs else f"cal-{self.cutoffs}"
        calibration = Calibration(
            shop_id="default", version=version, method="quantile", cutoffs=CUTOFFS[self.cutoffs]
        )
        self.model = SegmentModel(self.rules, calibration, self.consent_required)

    def load(self, customer: str, reread: bool) -> CustomerState | None:
        """The customer's state: the object itself, or read back from its JSON as a table
        value is (with its due time handed to ``next_due``, as the worker does)."""
        state = self.states.get(customer)
        if state is None or not reread:
            return state
        again = CustomerState.model_validate_json(state.model_dump_json(exclude_defaults=True))
        remember_due(again, self.model, next_due(state, self.model))
        return again

    def step(self, step: tuple[Any, ...], reread: bool) -> tuple[Any, ...]:
        """Apply one step; what it gave (transitions or the rejection's reason)."""
        kind = step[0]
        if kind == "recalibrate":
            self.cutoffs = step[1]
            self.remodel()
            return ()
        if kind == "rules":
            self.rules = RULE_SETS[step[1]]
            self.remodel()
            return ()
        if kind == "order":
            event = step[1]
            customer = event.customer_id
        else:
            customer = step[1]
        state = self.load(customer, reread)
        transitions: list[Transition] = []
        if kind == "order":
            try:
                new, transitions = self.apply(state, event, self.model)
            except OrderRejected as exc:
                return ("rejected", exc.reason)
            self.states[customer] = new
            return ("order", new is state, *transitions)
        if kind == "consent":
            consent = CONSENT_EVENT.validate_python(
                {
                    "type": "consent_granted" if step[2] else "consent_withdrawn",
                    "customer_id": customer,
                    "occurred_at": at(step[3]).isoformat(),
                }
            )
            self.states[customer], transitions = apply_consent(state, consent, self.model)
            return tuple(transitions)
        if state is None:
            return ()
        if kind == "time":
            self.states[customer], transitions = due_transitions(state, at(step[2]), self.model)
        elif kind == "reevaluate":
            self.states[customer], transitions = reevaluate(state, self.model, at(step[2]))
        else:
            request = ERASURE_EVENT.validate_python(
                {
                    "customer_id": customer,
                    "request_id": "e1",
                    "occurred_at": at(step[2]).isoformat(),
                }
            )
            transitions = erase(state, request, self.model)
            del self.states[customer]
        return tuple(transitions)


def assert_same_outputs(reference: World, fast: World) -> None:
    assert fast.states.keys() == reference.states.keys()
    for customer, expected in reference.states.items():
        state = fast.states[customer]
        assert state == expected
        assert state.model_fields_set == expected.model_fields_set
        assert list(state.__dict__) == list(expected.__dict__)
        assert list(state.orders) == list(expected.orders)
        for order_id, record in expected.orders.items():
            assert state.orders[order_id].model_fields_set == record.model_fields_set
            assert list(state.orders[order_id].categories) == list(record.categories)
        assert state.model_dump_json(exclude_defaults=True) == expected.model_dump_json(
            exclude_defaults=True
        )
        assert next_due(state, fast.model) == next_due(expected, reference.model)
        if expected.as_of is not None:
            figures = current_metrics(state, fast.model)
            assert figures.model_dump_json() == (
                current_metrics(expected, reference.model).model_dump_json()
            )


def assert_same_step(got: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        if isinstance(theirs, Transition.__args__):  # type: ignore[attr-defined]
            assert type(mine) is type(theirs)
            assert mine == theirs
            assert mine.model_fields_set == theirs.model_fields_set
            assert mine.model_dump_json() == theirs.model_dump_json()
        else:
            assert mine == theirs


@contextmanager
def window(orders: int) -> Iterator[None]:
    """The fold with a window of ``orders`` order records (small: the folding is reached)."""
    with (
        patch.object(fold, "WINDOW_ORDERS", orders),
        patch.object(fastfold, "WINDOW_ORDERS", orders),
    ):
        yield


class Coverage:
    """How often the fast path decided (a stream the fast path never takes proves nothing)."""

    fast = 0
    fallback = 0


def counted_apply(
    state: CustomerState | None, event: OrderEventT, model: SegmentModel
) -> tuple[CustomerState, list[Transition]]:
    if fastfold.apply_placed(state, event, model) is None:
        Coverage.fallback += 1
    else:
        Coverage.fast += 1
    return apply_order(state, event, model)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(st.tuples(steps, st.booleans()), min_size=1, max_size=40),
    st.booleans(),
    st.sampled_from((3, WINDOW_ORDERS)),
)
def test_the_fast_path_gives_what_the_reference_gives(
    stream: list[tuple[tuple[Any, ...], bool]], consent_required: bool, orders: int
) -> None:
    reference = World(apply_order_reference, consent_required)
    fast = World(counted_apply, consent_required)
    with window(orders):
        for step, reread in stream:
            expected = reference.step(step, reread)
            assert_same_step(fast.step(step, reread), expected)
            assert_same_outputs(reference, fast)


@st.composite
def plain_orders(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Orders as most customers place them: mostly in time order, a few weeks apart, a few
    categories each, now and then a duplicate or a cancellation."""
    stream: list[tuple[str, Any]] = []
    day = 0.0
    for number in range(draw(st.integers(min_value=1, max_value=25))):
        day += draw(st.floats(min_value=-2, max_value=25, allow_nan=False))
        customer = draw(customers)
        again = draw(st.integers(min_value=0, max_value=9)) == 0
        order = f"o{draw(st.integers(min_value=0, max_value=number)) if again else number}"
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            stream.append(("order", model(cancelled(customer, order, round(max(day, 0), 3)))))
            continue
        event = placed(
            customer,
            order,
            round(max(day, 0), 3),
            total=draw(st.integers(min_value=0, max_value=30_000)),
            discount=draw(st.integers(min_value=0, max_value=3_000)),
        )
        event["lines"] = [
            {"sku": f"s{i}", "category": category, "quantity": 1, "unit_price": price}
            for i, (category, _, price) in enumerate(draw(st.lists(line, max_size=3)))
        ]
        stream.append(("order", model(event)))
    return stream


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain_orders(), st.booleans())
def test_streams_of_plain_orders(stream: list[tuple[str, Any]], reread: bool) -> None:
    """Orders only, as most customers place them: mostly the fast path."""
    reference = World(apply_order_reference, False)
    fast = World(counted_apply, False)
    for step in stream:
        expected = reference.step(step, reread)
        assert_same_step(fast.step(step, reread), expected)
        assert_same_outputs(reference, fast)


def test_the_streams_reach_the_fast_path() -> None:
    Coverage.fast = Coverage.fallback = 0
    test_streams_of_plain_orders()
    assert Coverage.fast > 2 * Coverage.fallback > 0
    Coverage.fast = Coverage.fallback = 0
    test_the_fast_path_gives_what_the_reference_gives()
    assert Coverage.fast > 0 and Coverage.fallback > 0


PLAIN = placed("c", "o1", 10, total=4000, category="bags")


def _state(*events: dict[str, Any], segment_model: SegmentModel = MODEL) -> CustomerState:
    state = None
    for event in events:
        state, _ = apply_order_reference(state, model(event), segment_model)
    assert state is not None
    return state


def test_the_fast_path_covers_a_first_order_and_a_repeat_order() -> None:
    assert fastfold.apply_placed(None, model(PLAIN), MODEL) is not None
    later = model(placed("c", "o2", 20, total=3000))
    assert fastfold.apply_placed(_state(PLAIN), later, MODEL) is not None


@pytest.mark.parametrize(
    ("events", "event"),
    [
        pytest.param((PLAIN,), cancelled("c", "o1", 12), id="cancellation"),
        pytest.param((PLAIN,), refunded("c", "o1", 12, 1000), id="refund"),
        pytest.param((PLAIN,), PLAIN, id="duplicate"),
        pytest.param((cancelled("c", "o1", 9),), PLAIN, id="its cancellation waits"),
        pytest.param((PLAIN,), placed("c", "o2", 11, currency="USD"), id="other currency"),
    ],
)
def test_what_the_fast_path_leaves_to_the_reference(
    events: tuple[dict[str, Any], ...], event: dict[str, Any]
) -> None:
    assert fastfold.apply_placed(_state(*events), model(event), MODEL) is None


def test_a_state_of_another_rule_set_or_calibration_is_left_to_the_reference() -> None:
    state = _state(PLAIN)
    later = model(placed("c", "o2", 20))
    other_rules = SegmentModel(RULE_SETS[1], MODEL.calibration)
    assert fastfold.apply_placed(state, later, other_rules) is None
    recalibrated = SegmentModel(RULES, MODEL.calibration.model_copy(update={"version": "v2"}))
    assert fastfold.apply_placed(state, later, recalibrated) is None


def test_consent_is_left_to_the_reference_unless_granted() -> None:
    strict = SegmentModel(RULES, MODEL.calibration, consent_required=True)
    assert fastfold.apply_placed(None, model(PLAIN), strict) is None
    later = model(placed("c", "o2", 20))
    assert fastfold.apply_placed(_state(PLAIN, segment_model=strict), later, strict) is None
    granted = CONSENT_EVENT.validate_python(
        {"type": "consent_granted", "customer_id": "c", "occurred_at": at(11).isoformat()}
    )
    state, _ = apply_consent(_state(PLAIN, segment_model=strict), granted, strict)
    assert fastfold.apply_placed(state, later, strict) is not None


def test_a_full_window_or_folded_orders_are_left_to_the_reference() -> None:
    with window(2):
        state = _state(PLAIN, placed("c", "o2", 11))
        assert state.earlier is None
        assert fastfold.apply_placed(state, model(placed("c", "o3", 12)), MODEL) is None
        folded = _state(PLAIN, placed("c", "o2", 11), placed("c", "o3", 12))
        assert folded.earlier is not None
    assert fastfold.apply_placed(folded, model(placed("c", "o4", 13)), MODEL) is None


def test_an_order_of_many_categories_is_left_to_the_reference() -> None:
    event = placed("c", "o1", 10)
    event["lines"] = [
        {"sku": f"s{i}", "category": f"k{i}", "quantity": 1, "unit_price": 100} for i in range(9)
    ]
    event["total"] = 900
    assert fastfold.apply_placed(None, model(event), MODEL) is None


class FutureCondition(Condition):
    """A condition with a field the fast path does not know (as a later rule set may have)."""

    max_days_to_next_order: float | None = None


def _with_segment(when: Condition) -> SegmentRules:
    extra = SegmentRule.model_construct(name="future", when=when)
    return RULES.model_copy(update={"version": "future", "segments": (extra, *RULES.segments)})


def test_a_rule_set_with_a_condition_field_the_fast_path_does_not_know_falls_back() -> None:
    assert fastfold.covers(RULES)
    unknown = _with_segment(FutureCondition(max_days_to_next_order=30.0))
    assert not fastfold.covers(unknown)
    future = SegmentModel(unknown, MODEL.calibration)
    assert fastfold.apply_placed(None, model(PLAIN), future) is None
    # the field given its default: used as well
    assert not fastfold.covers(_with_segment(FutureCondition(max_days_to_next_order=None)))
    # the field left out: nothing the fast path does not know
    assert fastfold.covers(_with_segment(FutureCondition()))


def test_a_rule_set_on_predictions_is_left_to_the_reference() -> None:
    from tests.unit.test_predictive import PREDICTIVE, SHOP

    assert not fastfold.covers(PREDICTIVE)
    assert fastfold.apply_placed(None, model(PLAIN), SHOP) is None


def test_the_known_condition_fields_are_fields_of_a_condition() -> None:
    assert set(Condition.model_fields) >= fastfold.KNOWN_CONDITION_FIELDS


def test_without_a_known_field_the_rule_file_falls_back() -> None:
    known = fastfold.KNOWN_CONDITION_FIELDS - {"max_average_order_value"}
    rules = RULES.model_copy(update={"version": "copy"})  # not remembered yet
    with patch.object(fastfold, "KNOWN_CONDITION_FIELDS", known):
        assert not fastfold.covers(rules)


def test_the_due_time_it_remembers_is_the_reference_s() -> None:
    fast = SegmentModel(RULES, MODEL.calibration)
    reference = SegmentModel(RULES, MODEL.calibration)
    state = None
    expected_state = None
    for day in (0, 3, 40, 41, 95):
        event = model(placed("c", f"o{day}", day, total=9000))
        state, _ = apply_order(state, event, fast)
        expected_state, _ = apply_order_reference(expected_state, event, reference)
        due = next_due(state, fast)
        assert due == next_due(expected_state, reference)
        assert isinstance(due, datetime) and due > state.as_of + timedelta(0)


@pytest.mark.parametrize("offset", [timedelta(0), -timedelta(microseconds=1), timedelta(days=300)])
def test_an_order_near_or_after_the_due_time_is_decided_after_time_as_the_reference_does(
    offset: timedelta,
) -> None:
    state = _state(PLAIN, placed("c", "o2", 12, total=20_000))
    due = next_due(state, MODEL)
    assert due is not None
    event = model(placed("c", "o3", ((due + offset) - at(0)) / timedelta(days=1)))
    assert event.occurred_at == due + offset
    reference = SegmentModel(RULES, MODEL.calibration)
    fast = SegmentModel(RULES, MODEL.calibration)
    expected, moves = apply_order_reference(state, event, reference)
    got = fastfold.apply_placed(state, event, fast)
    assert got is not None
    assert_same_step(tuple(got[1]), tuple(moves))
    timed = [t for t in moves if t.cause.kind == "time"]
    assert bool(timed) == (offset >= timedelta(0))
    assert got[0] == expected
    assert got[0].model_fields_set == expected.model_fields_set
    assert next_due(got[0], fast) == next_due(expected, reference)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(RULE_SETS),
    st.sampled_from((0.0, 0.05, 0.1, 0.3, 1.0)) | st.floats(0, 1).map(lambda s: round(s, 4)),
    st.sampled_from((0, 2500, 3000)) | st.integers(min_value=0, max_value=100_000),
)
def test_the_bounds_it_matches_are_the_rule_sets(
    rules: SegmentRules, share: float, average: int
) -> None:
    plan = fastfold._plan(rules)
    assert plan is not None
    assert fastfold._bounds_matched(plan, share, average) == bounds_matched(rules, share, average)
