"""Property-based tests of the fold: order, duplicates and cancellations."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from models.due import dwell_ends_at, next_due, remember_due
from models.fold import (
    TRANSITION_NAMESPACE,
    OrderRejected,
    apply_order,
    due_transitions,
    reevaluate,
    uuid5_text,
)
from models.rules import Cell, SegmentFacts, SegmentRules, bounds_matched, decide, decide_matched
from models.scoring import Calibration, Cutoffs, recency_drops, score_recency
from models.segment_model import SegmentModel, current_metrics
from models.state import CustomerState, compute_metrics, days_between
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

    rules = SegmentRules.model_validate({**RULES.model_dump(), "segments": segments})
    facts = SegmentFacts(Cell(inactive, single, *scores), share, aov)
    first = next((s.name for s in rules.segments if s.when.matches(facts)), None)
    assert decide(facts, rules) == first
    assert decide(facts, rules) == first  # the second time from the compiled table
    # the search for due times decides from the money bounds matched, not the values
    matched = bounds_matched(rules, share, aov)
    assert decide_matched(facts.cell, matched, rules) == first
    assert decide_matched(facts.cell, matched, rules) == first


@settings(max_examples=150, deadline=None)
@given(orders, st.floats(min_value=0, max_value=900, allow_nan=False))
def test_the_due_time_stored_with_a_state_is_taken_only_where_it_is_next_due(spec, later) -> None:  # type: ignore[no-untyped-def]
    """A state read back from the table brings its stored due time to ``next_due`` (sparing
    its computation), which must be what ``next_due`` computes afresh; under another
    calibration the stored one is not taken."""
    from datetime import UTC, datetime

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

    from models.insights import ACTIVITY_NAMESPACE, order_activity_id

    assert uuid5_text(name) == str(uuid.uuid5(TRANSITION_NAMESPACE, name))
    parts = (name, "c", "order_placed", name[::-1])
    assert order_activity_id(*parts) == str(uuid.uuid5(ACTIVITY_NAMESPACE, "\x1f".join(parts)))


def _dwell_model(days: int):  # type: ignore[no-untyped-def]

    scoring = RULES.scoring.model_copy(update={"min_dwell_days": days})
    return SegmentModel(RULES.model_copy(update={"scoring": scoring}), CAL)


def _searched_due(state, segment_model):  # type: ignore[no-untyped-def]
    """The due instant searched for this very state, nothing remembered: the candidate
    instants in time order, each decided from the state's figures with its recency (the
    search as it was before shapes)."""
    from datetime import timedelta

    if state.segment is None or state.as_of is None:
        return None
    m = current_metrics(state, segment_model)
    last, threshold = m.last_order_at, m.inactive_after_days
    if last is None or threshold is None:
        return None
    cuts = segment_model.calibration.cutoffs.recency_days
    dwell_end = dwell_ends_at(state, segment_model)
    candidates = {last + offset for offset in recency_drops(cuts)}
    candidates.add(last + timedelta(days=threshold))
    if dwell_end is not None:
        candidates.add(dwell_end)
    for candidate in sorted(candidates):
        if candidate <= state.as_of or (dwell_end is not None and candidate < dwell_end):
            continue
        segment = None
        if m.f_score and m.m_score:
            recency = days_between(last, candidate)
            cell = Cell(
                recency >= threshold,
                m.order_count == 1,
                score_recency(recency, cuts),
                m.f_score,
                m.m_score,
            )
            facts = SegmentFacts(cell, m.discount_share, m.average_order_value)
            segment = decide(facts, segment_model.rules)
        if segment != state.segment:
            return candidate
    return None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(orders, min_size=1, max_size=6),
    st.floats(min_value=0, max_value=900, allow_nan=False),
    st.sampled_from([0, 30]),
)
def test_due_times_remembered_by_shape_are_the_ones_searched_for_the_state(  # type: ignore[no-untyped-def]
    customers, later, dwell
) -> None:
    """``next_due`` answers from the offset found for an earlier customer of the same shape
    (the example's customers share one model); it is the instant the candidates' search gives
    for this very state, after each order and after time has passed."""

    segment_model = _dwell_model(dwell)
    for spec in customers:
        state = None
        for event in _events(spec):
            state, _ = apply_order(state, event, segment_model)
            assert next_due(state, segment_model) == _searched_due(state, segment_model)
        timed, _ = due_transitions(state, state.as_of + timedelta(days=later), segment_model)
        assert next_due(timed, segment_model) == _searched_due(timed, segment_model)


def test_due_times_remembered_by_shape_on_a_realistic_stream() -> None:
    """Thousands of customers of four shops (discount hunters, refunds, cancellations) through
    the shops' models: every state's ``next_due`` is the searched instant, and most are
    answered from a shape already seen."""
    import itertools

    from bench.core import Fold
    from bench.data import StreamSpec, order_stream

    fold = Fold()
    checked = 0
    for key, value in itertools.islice(order_stream(StreamSpec(customers=20_000)), 4_000):
        try:
            state, _ = fold.step(key, value)
        except OrderRejected:
            continue
        segment_model = fold.models[state.shop_id]
        assert next_due(state, segment_model) == _searched_due(state, segment_model)
        checked += 1
    assert checked > 3_500
    shapes = sum(len(m._shapes) for m in fold.models.values())
    assert 0 < shapes < checked / 4  # shapes are shared: the memo is doing its work


# The rule file's segments with more money and share bounds (minimum bounds, two bounds on one
# rule, bounds on a rule that also asks for a flag), ahead of the rules they would shadow.
_BOUNDED = [
    {"name": "bargain_hunter", "when": {"f": [2, 5], "min_discount_share": 0.3}},
    {
        "name": "big_basket",
        "when": {
            "inactive": False,
            "min_average_order_value": 9000,
            "max_discount_share": 0.5,
        },
    },
    {"name": "small_and_new", "when": {"single_order": True, "max_average_order_value": 1500}},
]


@settings(max_examples=200, deadline=None)
@given(
    st.permutations(range(len(RULES.segments) + len(_BOUNDED))),
    st.sampled_from([0, 7, 30]),
    orders,
    st.integers(min_value=-400, max_value=400),
    st.floats(min_value=0, max_value=900, allow_nan=False),
)
def test_due_times_by_shape_under_rules_with_money_bounds(  # type: ignore[no-untyped-def]
    order, dwell, spec, shift, later
) -> None:
    """Under a rule set with minimum and maximum money and share bounds in any rule order, a
    customer and the same orders shifted in time (the same shape, so the second answer comes
    from the first's offset) get the searched due time, and the shifted one's is the first's
    shifted."""

    segments = [*RULES.model_dump()["segments"], *_BOUNDED]
    scoring = {**RULES.model_dump()["scoring"], "min_dwell_days": dwell}
    rules = SegmentRules.model_validate(
        {**RULES.model_dump(), "segments": [segments[i] for i in order], "scoring": scoring}
    )
    segment_model = SegmentModel(rules, CAL)
    dues = []
    for offset in (0, shift):
        state = None
        for day, total, discount, category in spec:
            event = model(placed("c", f"o{day}-{total}", day + offset, total, discount, category))
            state, _ = apply_order(state, event, segment_model)
        due = next_due(state, segment_model)
        assert due == _searched_due(state, segment_model)
        timed, _ = due_transitions(state, state.as_of + timedelta(days=later), segment_model)
        assert next_due(timed, segment_model) == _searched_due(timed, segment_model)
        dues.append(due)
    first, shifted = dues
    assert (first is None) == (shifted is None)
    if first is not None:
        assert shifted == first + timedelta(days=shift)
