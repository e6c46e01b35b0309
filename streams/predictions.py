"""Prediction models per shop (see ``models.predictions``): fitted over every customer of a shop
(across all partitions, read from the table's changelog), published to a compacted topic keyed
by shop, and followed by every worker, like the quantile calibrations.

A fit is asked for by ``segmenter predict fit`` or made on schedule by the leader (wall clock).
The states are decoded one at a time, giving the event loop a turn every ``YIELD_EVERY``
customers; the maximum-likelihood fit itself runs in a thread, so the worker goes on processing
orders meanwhile. A shop with too few repeat buyers gets no model (its previous one, if any,
stays), and the fit says why.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from config.settings import Settings
from models.bgnbd import FitError
from models.predictions import (
    BgNbdInputs,
    CustomerPredictions,
    PredictionModel,
    bgnbd_inputs,
    fit_shop,
    predictions_for,
)
from models.state import CustomerState
from streams import shop_topics
from streams.calibrations import YIELD_EVERY, event_time_clock
from streams.changelog import read_latest
from streams.codecs import decode_prediction_model, decode_stored, encode_prediction_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitReport:
    """What a fit published, and why the other shops got no model."""

    published: list[PredictionModel]
    refused: dict[str, str] = field(default_factory=dict)


async def collect_inputs(
    states: Iterable[CustomerState],
    at: Callable[[str], datetime],
    shop: str | None = None,
) -> dict[str, list[BgNbdInputs]]:
    """Every customer's (x, t_x, T) by shop, at ``at(shop)`` (a turn of the event loop every
    ``YIELD_EVERY`` customers). A customer whose last order lies after the instant (an order
    stamped ahead of the clock) is summarised at its own latest instant."""
    by_shop: dict[str, list[BgNbdInputs]] = defaultdict(list)
    for count, state in enumerate(states, start=1):
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if shop is not None and state.shop_id != shop:
            continue
        instant = at(state.shop_id)
        try:
            inputs = bgnbd_inputs(state, instant)
        except ValueError:
            if state.as_of is None:
                continue
            inputs = bgnbd_inputs(state, max(instant, state.as_of))
        if inputs is not None:
            by_shop[state.shop_id].append(inputs)
    return dict(by_shop)


async def fit_models(
    inputs: dict[str, list[BgNbdInputs]],
    at: Callable[[str], datetime],
    min_repeat_buyers: int,
    clv_months: int = 12,
    annual_discount_rate: float = 0.1,
) -> FitReport:
    """One model per shop that has enough repeat buyers (each fit in a thread)."""
    report = FitReport(published=[])
    for shop_id, rows in sorted(inputs.items()):
        try:
            model = await asyncio.to_thread(
                fit_shop,
                shop_id,
                rows,
                at(shop_id),
                min_repeat_buyers,
                clv_months,
                annual_discount_rate,
            )
        except FitError as exc:
            report.refused[shop_id] = str(exc)
            continue
        report.published.append(model)
    return report


def _decoded(values: Iterable[bytes]) -> Iterator[CustomerState]:
    return (decode_stored(value).state for value in values)


async def fit_and_publish(settings: Settings, now: datetime, shop: str | None = None) -> FitReport:
    """Fit every shop's model (or ``shop``'s) from the changelog and publish what was fitted."""
    stored = (await read_latest(settings)).values()

    def wall_clock(_shop: str) -> datetime:
        return now

    clock = await event_time_clock(_decoded(stored)) if settings.clock == "event" else wall_clock
    inputs = await collect_inputs(_decoded(stored), clock, shop)
    report = await fit_models(
        inputs,
        clock,
        settings.prediction_min_repeat_buyers,
        settings.prediction_clv_months,
        settings.prediction_discount_rate,
    )
    if shop is not None and shop not in inputs:
        report.refused[shop] = f"shop {shop!r} has no customer with a counted order"
    await publish_models(settings, report.published)
    return report


def fit_due(
    models: Iterable[PredictionModel],
    last_attempt: datetime | None,
    now: datetime,
    interval: timedelta,
) -> bool:
    """Whether a scheduled fit is due: ``interval`` after the oldest model adopted or after the
    last attempt, whichever is later; now when there is neither (as ``recalibration_due``)."""
    return shop_topics.schedule_due((m.fitted_at for m in models), last_attempt, now, interval)


async def publish_models(settings: Settings, models: list[PredictionModel]) -> None:
    await shop_topics.publish(
        settings,
        settings.predictions_topic,
        [(m.shop_id, encode_prediction_model(m)) for m in models],
    )


async def read_models(settings: Settings) -> dict[str, PredictionModel]:
    """The latest prediction model of every shop."""
    return await shop_topics.read_latest(
        settings, settings.predictions_topic, decode_prediction_model, lambda m: m.shop_id
    )


class ShopPredictions:
    """The prediction model each shop's customers are predicted with, in a worker, and the
    customer figures computed with it."""

    # The Redis hash fields of the predictions (empty strings without a model).
    FIELDS = ("p_alive", "expected_orders_90d", "predicted_clv", "prediction_model")

    def __init__(
        self,
        models: dict[str, PredictionModel] | None = None,
        horizon_days: float = 90.0,
        clv_months: int = 12,
        discount_rate: float = 0.1,
    ) -> None:
        self.models: dict[str, PredictionModel] = dict(models or {})
        self.horizon_days = horizon_days
        self.clv_months = clv_months
        self.discount_rate = discount_rate

    @classmethod
    def from_settings(
        cls, settings: Settings, models: dict[str, PredictionModel] | None = None
    ) -> ShopPredictions:
        return cls(
            models,
            settings.prediction_horizon_days,
            settings.prediction_clv_months,
            settings.prediction_discount_rate,
        )

    def predictions(self, state: CustomerState, at: datetime) -> CustomerPredictions | None:
        """The customer's predictions at ``at`` under their shop's adopted model."""
        return predictions_for(
            state,
            self.models.get(state.shop_id),
            at,
            self.horizon_days,
            self.clv_months,
            self.discount_rate,
        )

    def fields(self, state: CustomerState) -> list[str]:
        """The Redis hash fields (name, value, ...) as of the state's latest instant."""
        found = self.predictions(state, state.as_of) if state.as_of is not None else None
        if found is None:
            return [item for name in self.FIELDS for item in (name, "")]
        return [
            "p_alive", _figure(found.p_alive, ".6f"),
            "expected_orders_90d", _figure(found.expected_orders, ".4f"),
            "predicted_clv", _figure(found.predicted_clv, ".0f"),
            "prediction_model", found.model_version,
        ]  # fmt: skip

    def model_for(self, shop_id: str) -> PredictionModel | None:
        return self.models.get(shop_id)

    def adopt(self, model: PredictionModel) -> bool:
        """Adopt a shop's newer model; True if adopted. The same or an older one (a replay of
        the compacted topic) is ignored."""
        current = self.models.get(model.shop_id)
        if current is not None and (
            model.version == current.version or model.fitted_at <= current.fitted_at
        ):
            return False
        self.models[model.shop_id] = model
        log.info(
            "prediction model %s of shop %s adopted (%d customers, %d repeat buyers)",
            model.version,
            model.shop_id,
            model.customers,
            model.repeat_buyers,
        )
        return True


def _figure(value: float | None, spec: str) -> str:
    """A prediction as Redis shows it: empty when there is none or it is not a finite number
    (a model at the edge of what the formulas compute), never "nan" or "inf"."""
    if value is None or not math.isfinite(value):
        return ""
    return format(value, spec)


async def follow_models(
    settings: Settings, on_model: Callable[[PredictionModel], Awaitable[object]]
) -> None:
    """Call ``on_model`` for every model on the topic, then for each new one (runs until
    cancelled)."""
    await shop_topics.follow(
        settings, settings.predictions_topic, decode_prediction_model, on_model, "prediction model"
    )
