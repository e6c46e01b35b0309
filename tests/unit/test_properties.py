"""Property-based tests of the fold: order, duplicates and cancellations."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from models.state import compute_metrics
from models.transitions import apply_order
from tests.factories import at, cancelled, model, placed
from tests.unit.core import MODEL, RULES

CAL = MODEL.calibration

orders = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=400),  # day
        st.integers(min_value=0, max_value=50_000),  # total
        st.integers(min_value=0, max_value=5_000),  # discount
        st.sampled_from(["shoes", "bags", "socks"]),
    ),
    min_size=1,
    max_size=8,
)


def _events(spec):  # type: ignore[no-untyped-def]
    return [
        model(placed("c", f"o{i}", day, total=total, discount=discount, category=category))
        for i, (day, total, discount, category) in enumerate(spec)
    ]


def _fold(events):  # type: ignore[no-untyped-def]
    state = None
    for event in events:
        state, _ = apply_order(state, event, MODEL)
    return state


@settings(max_examples=150, deadline=None)
@given(orders, st.randoms(use_true_random=False))
def test_any_permutation_gives_the_same_state(spec, rnd) -> None:  # type: ignore[no-untyped-def]
    events = _events(spec)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a, b = _fold(events), _fold(shuffled)
    assert a.orders == b.orders
    assert a.as_of == b.as_of
    assert a.segment == b.segment
    assert compute_metrics(a, a.as_of, RULES, CAL) == compute_metrics(b, b.as_of, RULES, CAL)


@settings(max_examples=150, deadline=None)
@given(orders)
def test_applying_every_order_twice_equals_once(spec) -> None:  # type: ignore[no-untyped-def]
    events = _events(spec)
    assert _fold(events + events) == _fold(events)


@settings(max_examples=150, deadline=None)
@given(orders, st.integers(min_value=0, max_value=7))
def test_cancel_after_place_equals_neither(spec, pick) -> None:  # type: ignore[no-untyped-def]
    events = _events(spec)
    victim = events[pick % len(events)]
    cancel = model(cancelled("c", victim.order_id, 500))
    with_cancel = _fold([*events, cancel])
    without = [e for e in events if e.order_id != victim.order_id]
    if not without:
        assert compute_metrics(with_cancel, at(500), RULES, CAL).order_count == 0
        assert with_cancel.segment is None
        return
    reference = _fold(without)
    # Scores are sticky (hysteresis) and so depend on the path; the R/F/M values do not.
    values = {"r_score", "f_score", "m_score"}
    assert compute_metrics(with_cancel, at(500), RULES, CAL).model_dump(
        exclude=values
    ) == compute_metrics(reference, at(500), RULES, CAL).model_dump(exclude=values)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=400, allow_nan=False), min_size=1, max_size=6))
def test_every_due_time_fires_exactly_then(gaps) -> None:  # type: ignore[no-untyped-def]
    from models.transitions import due_transitions, next_due

    days = [0.0]
    for gap in gaps:
        days.append(days[-1] + gap)
    state = _fold([model(placed("c", f"o{i}", day)) for i, day in enumerate(days)])
    due = next_due(state, MODEL)
    assert due is not None  # every customer with orders ends up inactive some day
    _, none = due_transitions(state, due - timedelta(microseconds=1), MODEL)
    assert none == []
    _, fired = due_transitions(state, due, MODEL)
    moves = [t for t in fired if t.type == "segment_changed"]
    assert [(t.cause.kind, t.event_time) for t in moves] == [("time", due)]


@settings(max_examples=150, deadline=None)
@given(orders, st.randoms(use_true_random=False))
def test_tags_do_not_depend_on_arrival_order(spec, rnd) -> None:  # type: ignore[no-untyped-def]
    events = _events(spec)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert _fold(events).tags == _fold(shuffled).tags


@settings(max_examples=150, deadline=None)
@given(
    orders,
    st.floats(min_value=0, max_value=900, allow_nan=False),
    st.floats(min_value=0.5, max_value=2.0, allow_nan=False),
)
def test_figures_handed_on_by_an_evaluation_equal_figures_computed_afresh(
    spec, later, scale
) -> None:  # type: ignore[no-untyped-def]
    """The figures an evaluation memoises for the state it decided (Redis, the due time) are
    the figures computed from scratch: after orders, after time, after a recalibration."""
    from models.scoring import Calibration, Cutoffs
    from models.state import CustomerState
    from models.transitions import (
        SegmentModel,
        current_metrics,
        due_transitions,
        next_due,
        reevaluate,
    )

    cut = CAL.cutoffs
    moved = Cutoffs(
        recency_days=tuple(c * scale for c in cut.recency_days),
        frequency=cut.frequency,
        monetary=tuple(c * scale for c in cut.monetary),
    )
    recalibrated = SegmentModel(
        RULES, Calibration(shop_id="s", version="moved", method="quantile", cutoffs=moved)
    )
    state = _fold(_events(spec))
    timed, _ = due_transitions(state, state.as_of + timedelta(days=later), MODEL)
    revised, _ = reevaluate(state, recalibrated, state.as_of + timedelta(days=later))
    for decided, segment_model in ((state, MODEL), (timed, MODEL), (revised, recalibrated)):
        afresh = CustomerState.model_validate(decided.model_dump())  # another object: no memo
        assert afresh == decided and afresh is not decided
        assert current_metrics(decided, segment_model) == current_metrics(afresh, segment_model)
        assert next_due(decided, segment_model) == next_due(afresh, segment_model)


@settings(max_examples=300, deadline=None)
@given(
    st.permutations(RULES.segments),
    st.booleans(),
    st.booleans(),
    st.tuples(*(st.integers(min_value=1, max_value=5) for _ in range(3))),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.integers(min_value=0, max_value=10_000),
)
def test_the_compiled_rule_map_decides_like_the_first_matching_rule(
    segments, inactive, single, scores, share, aov
) -> None:  # type: ignore[no-untyped-def]
    """The per-cell lookup ``decide`` uses gives the segment of the first rule, in rule order,
    whose whole condition matches (the rule order permuted: partial rules anywhere)."""
    from models.rules import Cell, SegmentFacts, SegmentRules, decide

    rules = SegmentRules.model_validate({**RULES.model_dump(), "segments": segments})
    facts = SegmentFacts(Cell(inactive, single, *scores), share, aov)
    first = next((s.name for s in rules.segments if s.when.matches(facts)), None)
    assert decide(facts, rules) == first
    assert decide(facts, rules) == first  # the second time from the compiled table


@settings(max_examples=150, deadline=None)
@given(orders, st.floats(min_value=0, max_value=900, allow_nan=False))
def test_the_due_time_stored_with_a_state_is_taken_only_where_it_is_next_due(spec, later) -> None:  # type: ignore[no-untyped-def]
    """A state read back from the table brings its stored due time to ``next_due`` (sparing
    its computation), which must be what ``next_due`` computes afresh; under another
    calibration the stored one is not taken."""
    from datetime import UTC, datetime

    from models.scoring import Calibration
    from models.state import CustomerState
    from models.transitions import SegmentModel, due_transitions, next_due, remember_due
    from streams.codecs import decode_stored_due, encode_stored

    state = _fold(_events(spec))
    timed, _ = due_transitions(state, state.as_of + timedelta(days=later), MODEL)
    other = SegmentModel(
        RULES, Calibration(shop_id="s", version="other", method="quantile", cutoffs=CAL.cutoffs)
    )
    wrong = datetime(2001, 1, 1, tzinfo=UTC)
    for decided in (state, timed):
        stored = decode_stored_due(encode_stored(3, decided, next_due(decided, MODEL)))
        afresh = CustomerState.model_validate(decided.model_dump())  # another object: no memo
        assert stored.due_known and stored.partition == 3 and stored.state == decided
        remember_due(stored.state, MODEL, stored.due)
        assert next_due(stored.state, MODEL) == next_due(afresh, MODEL) == stored.due
        remember_due(stored.state, other, wrong)
        assert next_due(stored.state, other) == next_due(afresh, other) != wrong


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_transition_ids_are_the_uuid5_of_their_parts(name: str) -> None:
    import uuid

    from models.transitions import TRANSITION_NAMESPACE, uuid5_text

    assert uuid5_text(name) == str(uuid.uuid5(TRANSITION_NAMESPACE, name))
