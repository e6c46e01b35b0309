"""Churn risk around the fold: the crossing instant as a due time, and moves reported once,
whatever the steps of time, moved back by an order, re-judged by a refit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from models.bgnbd import BgNbdParams, p_alive
from models.churn import (
    BECAME,
    NO_LONGER,
    churn_due,
    churn_event_id,
    churn_move,
    churn_transition,
    crossing,
    likely_churned,
    merged_due,
)
from models.due import next_due
from models.events import Cause
from models.fold import time_passes_to
from models.frozen import evolve
from models.predictions import PredictionModel, bgnbd_inputs
from models.rules import PredictionRules, SegmentRule
from tests.factories import at, placed, prediction_model
from tests.unit.core import MODEL as SEGMENTS
from tests.unit.core import fold

CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def _model(params: BgNbdParams = CDNOW, version: str = "p1") -> PredictionModel:
    return prediction_model(params, version=version)


MODEL = _model()
STATE, _ = fold([placed("c", "o1", 0), placed("c", "o2", 14), placed("c", "o3", 30)])
CROSSING = crossing(STATE, MODEL, 0.3)


def test_the_crossing_is_where_p_alive_reaches_the_threshold() -> None:
    assert CROSSING is not None
    assert at(30) < CROSSING
    for when, above in ((CROSSING - timedelta(seconds=1), True), (CROSSING, False)):
        inputs = bgnbd_inputs(STATE, when)
        assert inputs is not None
        assert (float(p_alive(CDNOW, inputs.x, inputs.t_x, inputs.T)) > 0.3) is above
    assert churn_due(STATE, MODEL, 0.3) == CROSSING
    assert churn_due(evolve(STATE, as_of=CROSSING), MODEL, 0.3) is None  # passed
    assert churn_due(STATE, None, 0.3) is None  # no model
    single, _ = fold([placed("d", "o1", 0)])
    assert churn_due(single, MODEL, 0.3) is None  # P(alive) stays 1


def test_the_earlier_due_time_is_scheduled() -> None:
    assert merged_due(None, None) is None
    assert merged_due(at(5), None) == at(5)
    assert merged_due(None, at(7)) == at(7)
    assert merged_due(at(9), at(7)) == at(7)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.001, 400.0), min_size=1, max_size=12))
def test_became_is_reported_once_at_the_first_evaluation_at_or_after_the_crossing(
    offsets: list[float],
) -> None:
    assert CROSSING is not None
    instants = sorted(at(30) + timedelta(days=d) for d in offsets)
    state = STATE
    moves = []
    for instant in instants:
        later = evolve(state, as_of=instant)  # a due time passing
        move = churn_move(state, MODEL, later, MODEL, 0.3)
        if move:
            moves.append((move, instant))
        state = later
    reached = [i for i in instants if i >= CROSSING]
    assert moves == ([(BECAME, reached[0])] if reached else [])


def test_an_order_moves_the_customer_back_and_a_refit_rejudges() -> None:
    assert CROSSING is not None
    churned = evolve(STATE, as_of=CROSSING)
    assert likely_churned(churned, MODEL, 0.3, CROSSING)
    day = (CROSSING - at(0)) / timedelta(days=1) + 1
    back, _ = fold([placed("c", "o4", day)], state=churned)
    assert churn_move(churned, MODEL, back, MODEL, 0.3) == NO_LONGER
    # a refit whose customers drop out far less often: the same state is no longer at risk
    loyal = _model(CDNOW.model_copy(update={"a": 0.05}), version="p2")
    assert churn_move(churned, MODEL, churned, loyal, 0.3) == NO_LONGER
    assert churn_move(churned, loyal, churned, MODEL, 0.3) == BECAME
    # nothing changes: nothing to report
    assert churn_move(STATE, MODEL, STATE, MODEL, 0.3) is None
    assert churn_move(None, None, STATE, MODEL, 0.3) is None


def test_event_ids_are_stable_and_distinct() -> None:
    one = churn_event_id("default", "c", BECAME, at(40))
    assert one == churn_event_id("default", "c", BECAME, at(40))
    assert one != churn_event_id("default", "c", NO_LONGER, at(40))
    assert one != churn_event_id("default", "c", BECAME, at(41))


def test_the_transition_is_stamped_with_the_exact_crossing_instant() -> None:
    assert CROSSING is not None
    late = evolve(STATE, as_of=CROSSING + timedelta(hours=5))  # a tick that came late
    event = churn_transition(STATE, MODEL, late, MODEL, 0.3, Cause(kind="time"))
    assert event is not None
    assert (event.move, event.transition) == (BECAME, "customer.became_likely_churned")
    assert event.event_time == CROSSING
    assert event.event_id == churn_event_id("default", "c", BECAME, CROSSING)
    assert event.p_alive <= 0.3
    assert event.p_alive > 0.3 - 1e-9
    assert (event.model_version, event.threshold) == ("p1", 0.3)
    day = (CROSSING - at(0)) / timedelta(days=1) + 1
    back, _ = fold([placed("c", "o4", day)], state=late)
    again = churn_transition(
        late, MODEL, back, MODEL, 0.3, Cause(kind="order_placed", order_id="o4")
    )
    assert again is not None
    assert again.move == NO_LONGER
    assert again.event_time == back.as_of
    assert again.p_alive > 0.3
    assert churn_transition(STATE, MODEL, STATE, MODEL, 0.3, Cause(kind="time")) is None


def test_the_threshold_comes_from_the_rule_file_per_shop() -> None:
    rules = PredictionRules.model_validate(
        {"churn_threshold": 0.25, "churn_threshold_by_shop": {"web": 0.4}}
    )
    assert rules.churn_threshold_for("web") == 0.4
    assert rules.churn_threshold_for("other") == 0.25
    assert PredictionRules().churn_threshold_for("web") == 0.3
    assert hash(rules) == hash(PredictionRules.model_validate(rules.model_dump()))
    with pytest.raises(ValidationError):
        PredictionRules.model_validate({"churn_threshold": 1.0})


def test_time_passes_to_an_instant_where_the_fold_has_nothing_due() -> None:
    """The churn layer's step to the crossing: the state as of that instant, the next
    revision, the segment the fold would keep there; nothing for an instant already passed."""
    assert CROSSING is not None and STATE.as_of is not None
    due = next_due(STATE, SEGMENTS)
    instant = min(CROSSING, due - timedelta(days=1)) if due else CROSSING
    stepped, moves = time_passes_to(STATE, instant, SEGMENTS)
    assert stepped.as_of == instant and stepped.revision == STATE.revision + 1
    assert (stepped.segment, stepped.tags, moves) == (STATE.segment, STATE.tags, [])
    assert next_due(stepped, SEGMENTS) == due  # the fold's own due time stays
    assert time_passes_to(stepped, instant, SEGMENTS) == (stepped, [])
    assert time_passes_to(STATE, STATE.as_of, SEGMENTS) == (STATE, [])


def test_a_segment_cannot_take_the_churn_risk_moves_name() -> None:
    with pytest.raises(ValidationError, match="reserved for the churn-risk transition"):
        SegmentRule(name="likely_churned")
    assert SegmentRule(name="likely_to_churn").name == "likely_to_churn"
