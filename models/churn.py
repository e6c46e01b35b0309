"""Churn risk as a time-caused transition, as a layer around the fold: whether a customer is
*likely churned* (P(alive) at or below the shop's threshold) at an instant, the next instant at
which that becomes true if nothing happens (to be merged with the fold's due time in the due
index), and the move to report between two evaluations of a customer.

Nothing here is stored in the state: the status is a function of the state, the instant and the
shop's prediction model. A move is decided by comparing the status before and after an
evaluation (an order, a due time passing, a refit), so it is reported once, at the first
evaluation at or after the crossing instant, however the instants in between are stepped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final, Literal

from models.bgnbd import p_alive
from models.events import Cause, ChurnRiskChanged
from models.memo import IdentityMemo
from models.predictions import BgNbdInputs, PredictionModel, bgnbd_inputs, likely_churned_at
from models.state import CustomerState, order_days

BECAME: Final = "became_likely_churned"
NO_LONGER: Final = "no_longer_likely_churned"
ChurnMove = Literal["became_likely_churned", "no_longer_likely_churned"]
DEFAULT_THRESHOLD: Final = 0.3
# Event ids of churn-risk transitions: uuid5 of the shop, customer, move and instant.
CHURN_NAMESPACE: Final = uuid.UUID("6f1c2a4e-3b7d-5c9e-8a10-2d4f6b8c0e13")


# The crossings of the states seen last: one evaluation asks for the same state's more than
# once (its status, its due time, its move), and the next one for the state before it.
_CROSSINGS: Final[IdentityMemo[CustomerState, tuple[PredictionModel, float, datetime | None]]] = (
    IdentityMemo()
)


def crossing(
    state: CustomerState | None, model: PredictionModel | None, threshold: float
) -> datetime | None:
    """The instant the customer's P(alive) reaches ``threshold`` if no order comes first;
    None without a model, a counted order or a repeat order day (P(alive) stays 1).
    Remembered per state object (it depends on the counted order days only, not on the
    state's latest instant)."""
    if state is None or model is None or state.as_of is None:
        return None
    known = _CROSSINGS.get(
        state, lambda s: (model, threshold, crossing_instant(s, model, threshold))
    )
    if known[0] is model and known[1] == threshold:
        return known[2]
    instant = crossing_instant(state, model, threshold)
    _CROSSINGS.put(state, (model, threshold, instant))
    return instant


def crossing_instant(
    state: CustomerState, model: PredictionModel, threshold: float
) -> datetime | None:
    """``crossing`` computed (no memo): ``likely_churned_at`` from the order days alone
    (x, t_x and the first day: what ``bgnbd_inputs`` gives, without the spend, which the
    crossing does not need)."""
    days = order_days(state)
    if days is None or days.repeat_days == 0:
        return None
    origin = datetime(days.first.year, days.first.month, days.first.day, tzinfo=UTC)
    inputs = BgNbdInputs(days.repeat_days, float((days.last - days.first).days), 0.0, 0.0, origin)
    return likely_churned_at(model.bgnbd, inputs, threshold)


def likely_churned(
    state: CustomerState | None,
    model: PredictionModel | None,
    threshold: float,
    at: datetime,
) -> bool:
    """Whether the customer's P(alive) at ``at`` is at or below ``threshold``."""
    instant = crossing(state, model, threshold)
    return instant is not None and instant <= at


def churn_due(
    state: CustomerState | None,
    model: PredictionModel | None,
    threshold: float,
) -> datetime | None:
    """The crossing instant if it still lies ahead of the state's latest instant: the due time
    this layer adds to the fold's (the earlier of the two is scheduled)."""
    instant = crossing(state, model, threshold)
    if instant is None or state is None or state.as_of is None or instant <= state.as_of:
        return None
    return instant


def merged_due(fold_due: datetime | None, churn: datetime | None) -> datetime | None:
    """The due time to schedule: the earlier of the fold's and the churn layer's."""
    if fold_due is None:
        return churn
    if churn is None:
        return fold_due
    return min(fold_due, churn)


def churn_move(
    before: CustomerState | None,
    before_model: PredictionModel | None,
    after: CustomerState | None,
    after_model: PredictionModel | None,
    threshold: float,
    was: bool | None = None,
) -> ChurnMove | None:
    """The move between two evaluations of one customer, each judged at its state's latest
    instant and under its model: after an order (the same model), after a due time (the same
    model, a later instant), after a refit (the same state, another model). ``was``: the
    status before, as judged and stored when it was written (then ``before_model`` is not
    needed: a worker that starts after a refit no longer has the model it replaced)."""
    if was is None:
        was = _at_latest(before, before_model, threshold)
    now = _at_latest(after, after_model, threshold)
    if now and not was:
        return BECAME
    if was and not now:
        return NO_LONGER
    return None


def _at_latest(
    state: CustomerState | None, model: PredictionModel | None, threshold: float
) -> bool:
    if state is None or state.as_of is None:
        return False
    return likely_churned(state, model, threshold, state.as_of)


def churn_event_id(shop_id: str, customer_id: str, move: ChurnMove, at: datetime) -> str:
    """The id of a churn-risk transition: the same if it is produced again."""
    return str(uuid.uuid5(CHURN_NAMESPACE, f"{shop_id}/{customer_id}/{move}/{at.isoformat()}"))


def churn_transition(
    before: CustomerState | None,
    before_model: PredictionModel | None,
    after: CustomerState,
    after_model: PredictionModel | None,
    threshold: float,
    cause: Cause,
    was: bool | None = None,
) -> ChurnRiskChanged | None:
    """The churn-risk transition between two evaluations of one customer (see ``churn_move``),
    stamped with the instant it happened: the crossing instant for a move caused by time (the
    exact instant, whatever instant the evaluation ran at), else the new state's instant."""
    move = churn_move(before, before_model, after, after_model, threshold, was)
    if move is None or after.as_of is None:
        return None
    model = after_model if move == BECAME else (after_model or before_model)
    assert model is not None  # a move needs a model on the side that is at risk
    when = after.as_of
    if cause.kind == "time":
        instant = crossing(after, after_model, threshold)
        if instant is not None and move == BECAME:
            when = instant
    inputs = bgnbd_inputs(after, when)
    alive = 1.0 if inputs is None else float(p_alive(model.bgnbd, inputs.x, inputs.t_x, inputs.T))
    return ChurnRiskChanged(
        event_id=churn_event_id(after.shop_id, after.customer_id, move, when),
        shop_id=after.shop_id,
        customer_id=after.customer_id,
        transition=f"customer.{move}",
        cause=cause,
        event_time=when,
        rule_version=after.rule_version or "",
        calibration_version=after.calibration_version or "",
        move=move,
        p_alive=alive,
        threshold=threshold,
        model_version=model.version,
    )
