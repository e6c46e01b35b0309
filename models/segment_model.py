"""A shop's segment model: its rule set, its calibration and the consent policy, together with
what is remembered per model (due times, current figures); and the questions asked of a state
under a model: which calibration a shop without one uses, whether a state was decided under
this model, and the customer's current figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from models.events import Metrics
from models.frozen import evolve
from models.memo import IdentityMemo
from models.predictions import PredictionModel
from models.rules import SegmentRules
from models.scoring import Calibration
from models.state import CustomerState, compute_metrics

if TYPE_CHECKING:
    from models.due import Shape


@dataclass(frozen=True)
class SegmentModel:
    """The rule set and the calibration of the customer's shop, and the consent policy; and
    the shop's prediction model if the rules ask it (``SegmentRules.uses_predictions``)."""

    rules: SegmentRules
    calibration: Calibration
    # True: a customer without a consent record is not segmented.
    consent_required: bool = False
    prediction: PredictionModel | None = None
    # next_due of the states seen last (next_due is asked of the same state more than once,
    # within the processing of one event)
    _due: IdentityMemo[CustomerState, datetime | None] = field(
        default_factory=IdentityMemo, init=False, repr=False, compare=False, hash=False
    )
    # current_metrics of the states decided last, as their evaluation computed them
    _current: IdentityMemo[CustomerState, Metrics] = field(
        default_factory=IdentityMemo, init=False, repr=False, compare=False, hash=False
    )
    # next_due's answers by shape (see models.due), as offsets from the last order
    _shapes: dict[Shape, timedelta | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @property
    def prediction_version(self) -> str | None:
        """The version of the prediction model segments are decided with (None: the rules ask
        no prediction, or the shop has no model)."""
        if self.prediction is None or not self.rules.uses_predictions:
            return None
        return self.prediction.version


def bootstrap_calibration(rules: SegmentRules, shop_id: str) -> Calibration:
    """The calibration of a shop that has none yet: the rule file's fixed cut-offs."""
    version = "bootstrap" if rules.scoring.mode == "quantile" else f"fixed:{rules.version}"
    return Calibration(
        shop_id=shop_id, version=version, method="fixed", cutoffs=rules.scoring.cutoffs
    )


def needs_reevaluation(state: CustomerState, model: SegmentModel) -> bool:
    """Whether the state was last evaluated under another rule set, calibration or (for rules
    that ask predictions) prediction model."""
    return (
        state.rule_version != model.rules.version
        or state.calibration_version != model.calibration.version
        or state.prediction_version != model.prediction_version
    )


def current_metrics(state: CustomerState, model: SegmentModel) -> Metrics:
    """The customer's figures as of their latest instant (``as_of``), with the scores their
    segment was decided with (what Redis shows). Memoised: the evaluation that decided the
    state hands its figures on."""
    if state.as_of is None:
        raise ValueError("a state without an instant has no current figures")
    return model._current.get(state, lambda s: _current_metrics(s, model))


def _current_metrics(state: CustomerState, model: SegmentModel) -> Metrics:
    assert state.as_of is not None
    metrics = compute_metrics(state, state.as_of, model.rules, model.calibration)
    scores = state.scores
    if scores is None:
        return metrics
    return evolve(metrics, r_score=scores.r, f_score=scores.f, m_score=scores.m)
