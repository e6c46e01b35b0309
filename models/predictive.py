"""Segment conditions on predictions: what a rule's ``max_p_alive``, ``min_p_alive`` and
``clv_top_share`` bounds ask of a customer at an instant, and the instants at which the answers
change if no order comes first (the due times they add).

Both predictions fall as time passes without an order, so each bound flips once between two
orders, at an instant computed once per state:

- P(alive) at or below a threshold: from the closed-form crossing instant (``models.churn``),
  the same instant a churn-risk move is stamped with. One-time buyers stay at P(alive) = 1.
- CLV within the shop's top share: at or above the CLV the share's best customers had when the
  shop's model was fitted (``PredictionModel.clv_percentiles``), until the first microsecond at
  which the customer's CLV falls below it (found by bisection over the microseconds of the
  next 20 years; the CLV is that of the fit's horizon and discount rate).

A customer whose shop has no model (or no spend model, for CLV) matches no prediction bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from models.churn import crossing_instant
from models.memo import IdentityMemo
from models.predictions import PredictionModel, bgnbd_inputs, predict
from models.rules import SegmentRules
from models.state import CustomerState

MICROS_PER_DAY: Final = 86_400_000_000
# How far after the last order day a CLV crossing is looked for.
CLV_SEARCH_DAYS: Final = 20 * 365
# The crossing instants computed for the states seen last: state -> {(kind, model version,
# bound): instant or None}.
_INSTANTS: Final[IdentityMemo[CustomerState, dict[tuple[str, str, float], datetime | None]]] = (
    IdentityMemo()
)


class Predictive:
    """One customer's predictions at one instant, as the rules' prediction bounds ask about
    them (``models.rules.PredictionView``)."""

    __slots__ = ("at", "model", "state")

    def __init__(self, state: CustomerState, model: PredictionModel | None, at: datetime) -> None:
        self.state = state
        self.model = model
        self.at = at

    def p_alive_at_most(self, threshold: float) -> bool | None:
        """Whether P(alive) is at or below ``threshold`` (None without a model)."""
        if self.model is None:
            return None
        instant = alive_crossing(self.state, self.model, threshold)
        return instant is not None and instant <= self.at

    def clv_in_top(self, share: float) -> bool | None:
        """Whether the CLV is within the shop's top ``share`` (None: not known)."""
        if self.model is None:
            return None
        cutoff = clv_cutoff(self.model, share)
        if cutoff is None:
            return None
        # (a customer asked has a counted order: without one there are no scores to decide on)
        instant = clv_crossing(self.state, self.model, cutoff)
        return instant is None or self.at < instant


def clv_cutoff(model: PredictionModel, share: float) -> float | None:
    """The CLV at which a customer enters the shop's top ``share`` (a whole percentage):
    the model's percentile 100 (1 - share); None without a spend model."""
    if not model.clv_percentiles:
        return None
    percentile = 100 - round(share * 100)
    return model.clv_percentiles[percentile - 1]


def alive_crossing(
    state: CustomerState, model: PredictionModel, threshold: float
) -> datetime | None:
    """The first instant P(alive) is at or below ``threshold`` (None: never)."""
    return _remembered(state, ("alive", model.version, threshold), crossing_instant, model)


def clv_crossing(state: CustomerState, model: PredictionModel, cutoff: float) -> datetime | None:
    """The first microsecond at which the customer's CLV is below ``cutoff``, on or after
    the last order day (None: not within ``CLV_SEARCH_DAYS``, or no counted order)."""
    return _remembered(state, ("clv", model.version, cutoff), _clv_crossing, model)


def due_instants(
    state: CustomerState, model: PredictionModel | None, rules: SegmentRules
) -> list[datetime]:
    """The instants at which one of the rules' prediction bounds flips for this customer."""
    if model is None:
        return []
    alive, shares = rules.prediction_bounds
    found = [alive_crossing(state, model, threshold) for threshold in alive]
    for share in shares:
        cutoff = clv_cutoff(model, share)
        if cutoff is not None:
            found.append(clv_crossing(state, model, cutoff))
    return [instant for instant in found if instant is not None]


def _remembered(
    state: CustomerState,
    key: tuple[str, str, float],
    compute: Callable[[CustomerState, PredictionModel, float], datetime | None],
    model: PredictionModel,
) -> datetime | None:
    known = _INSTANTS.get(state, _new_table)
    if key in known:
        return known[key]
    instant = known[key] = compute(state, model, key[2])
    return instant


def _new_table(_state: CustomerState) -> dict[tuple[str, str, float], datetime | None]:
    return {}


def _clv_crossing(state: CustomerState, model: PredictionModel, cutoff: float) -> datetime | None:
    if state.as_of is None:
        return None
    inputs = bgnbd_inputs(state, state.as_of)
    if inputs is None:
        return None

    def below(micros: int) -> bool:
        at = inputs._replace(T=micros / MICROS_PER_DAY)
        value = predict(model, at, 0.0, model.clv_months, model.annual_discount_rate)
        return value.predicted_clv is None or value.predicted_clv < cutoff

    low = math.ceil(inputs.t_x * MICROS_PER_DAY)  # the last order day's start
    if below(low):
        return inputs.origin + timedelta(microseconds=low)
    high = low + CLV_SEARCH_DAYS * MICROS_PER_DAY
    if not below(high):
        return None
    while high - low > 1:  # not below at ``low``, below at ``high``
        middle = (low + high) // 2
        if below(middle):
            high = middle
        else:
            low = middle
    return inputs.origin + timedelta(microseconds=high)
