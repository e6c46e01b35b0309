"""Segment conditions on predictions (P(alive), CLV rank): the decision at any instant equals
the one made from the formulas' values at that instant, the segment moves at the exact instant
a bound flips, and a refit re-decides with cause ``model_refit``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from models.bgnbd import BgNbdParams, p_alive
from models.due import next_due
from models.events import Cause
from models.fold import apply_order, due_transitions, evaluate, reevaluate, transition_id
from models.frozen import evolve
from models.predictions import PredictionModel, bgnbd_inputs, predict
from models.predictive import Predictive, clv_crossing, clv_cutoff
from models.rules import Condition, SegmentRule
from models.segment_model import SegmentModel, bootstrap_calibration, needs_reevaluation
from models.spend import GammaGammaParams
from tests.factories import at, model, placed, prediction_model
from tests.unit.core import RULES, fold

HIGH_VALUE_AT_RISK = SegmentRule(
    name="high_value_at_risk",
    when=Condition(single_order=False, max_p_alive=0.5, clv_top_share=0.2),
)
PREDICTIVE = RULES.model_copy(
    update={"version": "predictive-1", "segments": (HIGH_VALUE_AT_RISK, *RULES.segments)}
)
CUTOFF = 5000.0  # the shop's top fifth starts at this CLV


def _prediction(version: str = "p1", b: float = 2.426) -> PredictionModel:
    return prediction_model(
        BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=b),
        version=version,
        gamma_gamma=GammaGammaParams(p=6.25, q=3.74, v=15.44),
        # percentiles 1 to 99: the 80th is CUTOFF
        clv_percentiles=tuple(CUTOFF * (i / 80) for i in range(1, 100)),
    )


PREDICTION = _prediction()
SHOP = SegmentModel(PREDICTIVE, bootstrap_calibration(PREDICTIVE, "default"), prediction=PREDICTION)
ORDERS = [placed("c", "o1", 0), placed("c", "o2", 14), placed("c", "o3", 30)]


class _Direct:
    """The predictions from the formulas at one instant (the reference)."""

    def __init__(self, state: object, at_: datetime) -> None:
        inputs = bgnbd_inputs(state, at_)  # type: ignore[arg-type]
        assert inputs is not None
        self.alive = float(p_alive(PREDICTION.bgnbd, inputs.x, inputs.t_x, inputs.T))
        self.clv = predict(PREDICTION, inputs, 90.0, 12, 0.1).predicted_clv

    def p_alive_at_most(self, threshold: float) -> bool:
        return self.alive <= threshold

    def clv_in_top(self, share: float) -> bool:
        cutoff = clv_cutoff(PREDICTION, share)
        assert cutoff is not None and self.clv is not None
        return self.clv >= cutoff


def _fold(events: list[dict[str, object]], shop: SegmentModel = SHOP):  # type: ignore[no-untyped-def]
    state, transitions = None, []
    for event in events:
        state, emitted = apply_order(state, model(event), shop)
        transitions += emitted
    assert state is not None
    return state, transitions


def test_the_conditions_are_checked() -> None:
    assert HIGH_VALUE_AT_RISK.when.predictive and HIGH_VALUE_AT_RISK.when.partial
    assert PREDICTIVE.uses_predictions and not RULES.uses_predictions
    assert PREDICTIVE.prediction_bounds == ((0.5,), (0.2,))
    with pytest.raises(ValidationError, match=r"min_p_alive .* is not below max_p_alive"):
        Condition(min_p_alive=0.5, max_p_alive=0.4)
    with pytest.raises(ValidationError, match="whole percentage"):
        Condition(clv_top_share=0.125)
    with pytest.raises(ValidationError):
        Condition(max_p_alive=1.0)
    assert clv_cutoff(PREDICTION, 0.2) == CUTOFF
    assert clv_cutoff(PREDICTION.model_copy(update={"clv_percentiles": ()}), 0.2) is None


def test_the_segment_moves_in_and_out_at_the_exact_instants_the_bounds_flip() -> None:
    state, _ = _fold(ORDERS)
    assert state.segment == "potential_loyalist"
    assert state.prediction_version == "p1"
    # the instants, from the formulas: P(alive) reaches 0.5, then the CLV falls below CUTOFF
    enters = _first_instant(state, lambda d: d.alive <= 0.5)
    leaves = _first_instant(state, lambda d: d.clv is not None and d.clv < CUTOFF)
    assert at(30) < enters < leaves < at(200)
    moved = []
    while (due := next_due(state, SHOP)) is not None and due <= at(200):
        state, transitions = due_transitions(state, due, SHOP)
        moved += [(t.to_segment, t.event_time) for t in transitions if t.type == "segment_changed"]
    assert ("high_value_at_risk", enters) in moved
    into = moved.index(("high_value_at_risk", enters))
    assert moved[into + 1][1] == leaves  # and out once the CLV is below the top fifth
    assert moved[into + 1][0] != "high_value_at_risk"
    # between the two, the segment is the one the direct values give
    middle = enters + (leaves - enters) / 2
    assert evaluate(evolve(state, as_of=middle), middle, SHOP, scoring="time").segment == (
        "high_value_at_risk"
    )


def _first_instant(state: object, flipped: object) -> datetime:
    """The first microsecond after day 30 at which ``flipped`` holds, by bisection on the
    formulas' values (independent of ``models.predictive``)."""
    low, high = at(30), at(400)
    assert flipped(_Direct(state, high)) and not flipped(_Direct(state, low))  # type: ignore[operator]
    while high - low > timedelta(microseconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=middle.microsecond)  # whole microseconds
        if flipped(_Direct(state, middle)):  # type: ignore[operator]
            high = middle
        else:
            low = middle
    return high


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(0.0, 200.0), min_size=1, max_size=6),
    st.lists(st.integers(500, 40_000), min_size=6, max_size=6),
    st.floats(0.0, 900.0),
)
def test_the_decision_at_any_instant_equals_the_one_from_the_formulas(
    days: list[float], totals: list[int], later: float
) -> None:
    events = [placed("c", f"o{i}", day, total=totals[i]) for i, day in enumerate(sorted(days))]
    state, _ = _fold(events)
    assert state.as_of is not None
    instant = state.as_of + timedelta(days=later)
    view = Predictive(state, PREDICTION, instant)
    direct = _Direct(state, instant)
    for threshold in (0.1, 0.3, 0.5, 0.9):
        assert view.p_alive_at_most(threshold) == direct.p_alive_at_most(threshold)
    for share in (0.05, 0.2, 0.5):
        assert view.clv_in_top(share) == direct.clv_in_top(share)
    crossing = clv_crossing(state, PREDICTION, CUTOFF)
    if crossing is not None:  # exact to the microsecond
        assert _Direct(state, crossing).clv < CUTOFF  # type: ignore[operator]
        before = crossing - timedelta(microseconds=1)
        if before >= state.as_of:
            assert _Direct(state, before).clv >= CUTOFF  # type: ignore[operator]


def test_without_a_model_no_prediction_bound_matches() -> None:
    shop = SegmentModel(PREDICTIVE, bootstrap_calibration(PREDICTIVE, "default"))
    assert shop.prediction_version is None
    state, _ = _fold(ORDERS, shop)
    plain, _ = fold(ORDERS)
    assert state.prediction_version is None
    while (due := next_due(state, shop)) is not None and due <= at(400):
        state, _ = due_transitions(state, due, shop)
        plain, _ = due_transitions(plain, due, _plain())
        assert state.segment == plain.segment != "high_value_at_risk"
    view = Predictive(state, None, at(100))
    assert view.p_alive_at_most(0.5) is None and view.clv_in_top(0.2) is None


def _plain() -> SegmentModel:
    from tests.unit.core import MODEL

    return MODEL


def test_a_refit_re_decides_with_its_own_cause_and_ids() -> None:
    state, _ = _fold(ORDERS)
    aged = evolve(state, as_of=at(70))
    assert evaluate(aged, at(70), SHOP, scoring="time").segment == "high_value_at_risk"
    # the refit: customers drop out sooner (b smaller), so at day 45 the customer is at risk
    refit = SegmentModel(PREDICTIVE, SHOP.calibration, prediction=_prediction("p2", b=0.6))
    at_45, _ = due_transitions(state, at(45), SHOP)
    assert at_45.segment != "high_value_at_risk"
    assert needs_reevaluation(at_45, refit) and not needs_reevaluation(at_45, SHOP)
    after, moved = reevaluate(at_45, refit, at(45))
    changes = [t for t in moved if t.type == "segment_changed"]
    assert [(t.to_segment, t.cause.kind) for t in changes][:1] == [
        ("high_value_at_risk", "model_refit")
    ]
    assert after.prediction_version == "p2" and not needs_reevaluation(after, refit)
    # the model's version is part of the transition ids of rules that ask predictions
    cause = Cause(kind="model_refit")
    assert transition_id(at_45, "x", cause, at(45), refit) != transition_id(
        at_45, "x", cause, at(45), SHOP
    )


def test_the_rules_check_counts_prediction_bounds_as_covering_a_cell_only_partly() -> None:
    from models.rule_check import check_rules

    only = RULES.model_copy(update={"segments": (HIGH_VALUE_AT_RISK,)})
    report = check_rules(only)
    assert not report.ok and len(report.uncovered) == len(all_cells_of_check())
    rest = SegmentRule(name="everyone_else")
    report = check_rules(RULES.model_copy(update={"segments": (HIGH_VALUE_AT_RISK, rest)}))
    assert report.ok and report.unreachable == ()
    # a rule behind a catch-all is dead, prediction bounds or not
    report = check_rules(RULES.model_copy(update={"segments": (rest, HIGH_VALUE_AT_RISK)}))
    assert report.unreachable == ("high_value_at_risk",)


def all_cells_of_check() -> list[object]:
    from models.rule_check import all_cells

    return list(all_cells())
