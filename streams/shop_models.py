"""Each shop's segment model (the rules with the shop's current calibration), and the privacy
policy every model is built with: the worker's view of the rules in force."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from models.predictions import PredictionModel
from models.privacy import erasure_marker, pseudonym
from models.rules import SegmentRules
from models.scoring import Calibration
from models.segment_model import SegmentModel, bootstrap_calibration

log = logging.getLogger(__name__)
E = TypeVar("E")


@dataclass(frozen=True)
class Privacy:
    """The consent policy and the pseudonymisation secret."""

    consent_required: bool = False
    secret: bytes | None = None

    def stored_id(self, shop_id: str, customer_id: str) -> str:
        """The id a customer is stored under: its pseudonym if a secret is set."""
        return customer_id if self.secret is None else pseudonym(self.secret, shop_id, customer_id)

    def identify(self, event: E) -> E:
        """The event with the customer id replaced by its pseudonym, if a secret is set."""
        if self.secret is None:
            return event
        alias = self.stored_id(event.shop_id, event.customer_id)  # type: ignore[attr-defined]
        return event.model_copy(update={"customer_id": alias})  # type: ignore[attr-defined]

    def marker(self, shop_id: str, customer_id: str) -> bytes:
        """The key of the customer's erasure marker."""
        return erasure_marker(self.secret, shop_id, customer_id).encode()


class ShopModels:
    """Segment models by shop, built on first use from the rules and the shop's calibration
    (quantile mode) or the rule file's cut-offs (fixed mode), with the shop's prediction model
    when the rules ask predictions."""

    def __init__(
        self,
        rules: SegmentRules,
        calibrations: Mapping[str, Calibration],
        privacy: Privacy = Privacy(),
    ) -> None:
        self.rules = rules
        self.calibrations = dict(calibrations)
        self.privacy = privacy
        # The shops' adopted prediction models (``follow_predictions``).
        self.predictions: Mapping[str, PredictionModel] = {}
        self._models: dict[str, SegmentModel] = {}

    def follow_predictions(self, predictions: Mapping[str, PredictionModel]) -> None:
        """Build models with the shops' prediction models in ``predictions`` (a mapping its
        owner keeps up to date; ``prediction_adopted`` tells of each change)."""
        self.predictions = predictions
        self._models.clear()

    def prediction_adopted(self, shop_id: str) -> None:
        """The shop's prediction model changed: its segment model is built again if the rules
        ask predictions (its customers are then re-evaluated, cause ``model_refit``)."""
        if self.rules.uses_predictions:
            self._models.pop(shop_id, None)

    def model_for(self, shop_id: str) -> SegmentModel:
        model = self._models.get(shop_id)
        if model is None:
            quantile = self.rules.scoring.mode == "quantile"
            calibration = (self.calibrations.get(shop_id) if quantile else None) or (
                bootstrap_calibration(self.rules, shop_id)
            )
            prediction = self.predictions.get(shop_id) if self.rules.uses_predictions else None
            model = self._models[shop_id] = SegmentModel(
                self.rules,
                calibration,
                consent_required=self.privacy.consent_required,
                prediction=prediction,
            )
        return model

    def adopt(self, calibration: Calibration) -> bool:
        """Adopt a shop's newer calibration; True if adopted (its customers are then to be
        re-evaluated). Older or equal calibrations (a replay of the compacted topic) are
        ignored; in fixed mode none is adopted."""
        if self.rules.scoring.mode != "quantile":
            return False
        current = self.calibrations.get(calibration.shop_id)
        if current is not None and _not_newer(calibration, current):
            return False
        self.calibrations[calibration.shop_id] = calibration
        self._models.pop(calibration.shop_id, None)
        log.info(
            "calibration %s of shop %s adopted (%d customers)",
            calibration.version,
            calibration.shop_id,
            calibration.customers,
        )
        return True

    def forget_models(self) -> None:
        """Build every model again on next use (the same rules and calibrations)."""
        self._models.clear()


def _not_newer(candidate: Calibration, current: Calibration) -> bool:
    if candidate.version == current.version:
        return True
    if candidate.computed_at is None or current.computed_at is None:
        return False
    return candidate.computed_at <= current.computed_at
