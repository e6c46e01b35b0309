"""Churn risk in the worker: ``models.churn`` called around the fold by the handlers. Each
evaluation of a consenting customer (an order, a consent change, a due time, a re-evaluation)
yields the churn-risk transition between the customer before and after it; the crossing
instant still ahead is scheduled beside the fold's due time (the earlier of the two in the due
index, the crossing stored apart in the table value); a due tick that reaches the crossing
lets time pass to it; a shop's newer prediction model re-evaluates the shop's customers
(cause ``model_refit``).

Without a prediction model for the customer's shop every call here leaves things as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from models.churn import churn_due, churn_transition, likely_churned
from models.due import next_due
from models.events import Cause, ChurnRiskChanged, OrderEventT, OrderRefunded, Transition
from models.fold import time_passes_to
from models.predictions import PredictionModel
from models.privacy import consented
from models.segment_model import SegmentModel
from models.state import CustomerState
from streams.codecs import Judged
from streams.predictions import ShopPredictions
from streams.shop_models import ShopModels


def order_cause(order: OrderEventT) -> Cause:
    """The cause of a churn-risk move an order event brings about."""
    # not getattr(order, "refund_id", None): a missing attribute of a pydantic model costs an
    # exception raised through its __getattr__, several microseconds per order
    refund_id = order.refund_id if isinstance(order, OrderRefunded) else None
    return Cause(kind=order.type, order_id=order.order_id, refund_id=refund_id)


class ChurnLayer:
    """The churn-risk layer of one worker, over its shops' adopted prediction models."""

    def __init__(self, predictions: ShopPredictions, models: ShopModels) -> None:
        self.predictions = predictions
        self.models = models
        # Customers whose re-evaluation after a refit is pending: state key -> the prediction
        # model they were last evaluated under (None: their shop had none), or the verdict
        # stored with them (found at start-up: the model they were judged under is gone).
        # Their next evaluation, whatever causes it, compares the customer before (under that
        # model, or by that verdict) with the customer after under the new one, so a move is
        # reported once.
        self.refits: dict[str, PredictionModel | bool | None] = {}

    def threshold(self, shop_id: str) -> float:
        """The shop's churn threshold (the rule file's ``predictions``)."""
        return self.models.rules.predictions.churn_threshold_for(shop_id)

    def due(self, state: CustomerState, consenting: bool) -> datetime | None:
        """The crossing instant still ahead of the customer's latest instant (None: none,
        no model, or no consent)."""
        model = self.predictions.model_for(state.shop_id)
        if model is None or not consenting:
            return None
        return churn_due(state, model, self.threshold(state.shop_id))

    def at_crossing(
        self, state: CustomerState, now: datetime, model: SegmentModel
    ) -> tuple[CustomerState, list[Transition]]:
        """After the fold's due times up to ``now`` (a due tick): the state as of the crossing
        instant if it lies between the state's latest instant and ``now`` and the fold has
        nothing due before it (else as it is). The instant is the exact crossing, whatever
        instant the tick came at, so a replay gives the same state."""
        if not consented(state, model.consent_required):
            return state, []
        instant = self.due(state, True)
        if instant is None or instant > now:
            return state, []
        fold_due = next_due(state, model)
        if fold_due is not None and fold_due < instant:
            return state, []  # the fold first: its due time is in the index still
        return time_passes_to(state, instant, model)

    def transition(
        self,
        previous: CustomerState | None,
        state: CustomerState,
        cause: Callable[[], Cause],
        consenting: bool,
    ) -> tuple[ChurnRiskChanged | None, bool]:
        """The churn-risk transition of an evaluation that turned ``previous`` into ``state``,
        and whether a refit of the customer's shop was pending for it (then the table value is
        written again: its stored crossing was the old model's)."""
        model = self.predictions.model_for(state.shop_id)
        refit = state.key in self.refits
        before = self.refits.pop(state.key) if refit else model
        was = before if isinstance(before, bool) else None
        before_model = None if isinstance(before, bool) else before
        if not consenting or (model is None and before_model is None and not was):
            return None, refit
        event = churn_transition(
            previous, before_model, state, model, self.threshold(state.shop_id), cause(), was
        )
        return event, refit

    def judged(self, state: CustomerState, consenting: bool) -> Judged | None:
        """The verdict stored with the state: the shop's model and whether the customer is
        likely churned at the state's latest instant (never without consent); None without a
        model."""
        model = self.predictions.model_for(state.shop_id)
        if model is None or state.as_of is None:
            return None
        churned = consenting and likely_churned(
            state, model, self.threshold(state.shop_id), state.as_of
        )
        return Judged(model.version, churned)

    def stale(self, shop_id: str, judged: Judged | None) -> bool:
        """Whether a stored customer was judged under another model than the shop's (or none
        while the shop has one): a refit the worker did not get to before it stopped, or a
        model published while no worker ran."""
        model = self.predictions.model_for(shop_id)
        return model is not None and (judged is None or judged.model_version != model.version)

    def restored(self, key: str, judged: Judged | None) -> None:
        """A stale stored customer (``stale``): re-evaluated like after a refit, judged before
        by its stored verdict."""
        self.refits.setdefault(key, judged is not None and judged.likely_churned)

    def refit_pending(self, key: str) -> bool:
        return key in self.refits

    def refitted(self, keys: list[str], before: PredictionModel | None) -> None:
        """A shop's newer model was adopted: these customers are re-evaluated (each keeps the
        model it was evaluated under before, if an earlier refit is still pending for it)."""
        for key in keys:
            self.refits.setdefault(key, before)

    def reset(self) -> None:
        """Forget pending refits (the re-evaluation queue is emptied, as after a rebalance)."""
        self.refits.clear()
