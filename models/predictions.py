"""Predictions per shop and per customer: a shop's fitted models (BG/NBD, ``models.bgnbd``;
Gamma-Gamma and CLV, ``models.spend``), fitted over its customers' summaries; one customer's
P(alive), expected orders and CLV; and the exact instant at which P(alive) falls below a
threshold.

Every customer is summarised as (x, t_x, T) by ``bgnbd_inputs``: time in days; x = the number of
distinct UTC days after the first order day on which the customer ordered; t_x = days from the
first to the last order day; T = days from the start (00:00 UTC) of the first order day to the
instant of evaluation. Only orders that count (not cancelled, not refunded in full) are used.

Everything here is pure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from models.bgnbd import (
    A_NEAR_ONE,
    Array,
    BgNbdParams,
    FitError,
    crossing_T,
    expected_orders,
    expected_orders_scalar,
    fit_bgnbd,
    p_alive,
    p_alive_scalar,
)
from models.spend import MONTH_DAYS, GammaGammaParams, clv, fit_gamma_gamma, monthly_rate
from models.state import CustomerState, order_days

DAY: Final = timedelta(days=1)


class PredictionModel(BaseModel):
    """A shop's fitted models, frozen and versioned like a calibration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shop_id: str
    version: str
    fitted_at: datetime
    # Customers with a counted order, and how many of them ordered on more than one day.
    customers: int
    repeat_buyers: int
    bgnbd: BgNbdParams
    # Mean log-likelihood per customer at the optimum.
    log_likelihood: float
    # None when the spend model could not be fitted (too few repeat buyers with spend, or no
    # finite mean): no CLV then.
    gamma_gamma: GammaGammaParams | None = None
    fit_seconds: float = 0.0
    # The CLV definition of the fit (horizon in months, annual discount rate), and the CLV of
    # the shop's customers at the fit's instant at every percentile (1 to 99; empty without a
    # spend model): segment conditions on CLV rank compare with them (``models.predictive``).
    clv_months: int = 12
    annual_discount_rate: float = 0.1
    clv_percentiles: tuple[float, ...] = ()


class BgNbdInputs(NamedTuple):
    """One customer's summary at an instant (see the module's docstring)."""

    x: int
    t_x: float
    T: float
    # Mean net spend per repeat order day (minor units); 0.0 without a repeat day.
    monetary: float
    # 00:00 UTC of the first order day: T is counted from it.
    origin: datetime


class CustomerPredictions(NamedTuple):
    p_alive: float
    expected_orders: float
    # Minor units of the shop's currency; None without a spend model.
    predicted_clv: float | None
    model_version: str


def bgnbd_inputs(state: CustomerState, at: datetime) -> BgNbdInputs | None:
    """The customer's (x, t_x, T) and repeat spend at instant ``at``; None without a counted
    order. The one place where a stored state becomes the models' input."""
    if state.earlier is not None:
        return _folded_inputs(state, at)
    spend_by_day: dict[date, int] = {}
    for record in state.counted_orders():
        if record.placed_at is None:  # pragma: no cover - counted orders are placed
            continue
        day = _utc(record.placed_at).date()
        spend_by_day[day] = spend_by_day.get(day, 0) + record.net_total
    if not spend_by_day:
        return None
    days = sorted(spend_by_day)
    first, last = days[0], days[-1]
    origin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    at = _utc(at)
    if at < datetime(last.year, last.month, last.day, tzinfo=UTC):
        raise ValueError(f"{at.isoformat()} is before the customer's last order day {last}")
    x = len(days) - 1
    repeat = [spend_by_day[d] for d in days[1:]]
    return BgNbdInputs(
        x=x,
        t_x=float((last - first).days),
        T=(at - origin) / DAY,
        monetary=sum(repeat) / x if x else 0.0,
        origin=origin,
    )


def _folded_inputs(state: CustomerState, at: datetime) -> BgNbdInputs | None:
    """``bgnbd_inputs`` of a customer with orders folded out of the state's window (more than
    32): x and t_x from the distinct order days the aggregates keep (``order_days``); the
    repeat spend is the mean net spend per order day over every day, the first included (the
    aggregates do not keep the first day's spend apart)."""
    days = order_days(state)
    if days is None:
        return None
    earlier = state.earlier
    spend = (earlier.spend if earlier is not None else 0) + sum(
        record.net_total for record in state.counted_orders()
    )
    first, last = days.first, days.last
    origin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    at = _utc(at)
    if at < datetime(last.year, last.month, last.day, tzinfo=UTC):
        raise ValueError(f"{at.isoformat()} is before the customer's last order day {last}")
    x = days.repeat_days
    return BgNbdInputs(
        x=x,
        t_x=float((last - first).days),
        T=(at - origin) / DAY,
        monetary=spend / (x + 1) if x else 0.0,
        origin=origin,
    )


def _utc(instant: datetime) -> datetime:
    return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


def likely_churned_at(
    params: BgNbdParams, inputs: BgNbdInputs, threshold: float
) -> datetime | None:
    """The first instant (to the microsecond) at which the customer's P(alive) is at or below
    ``threshold``, if no order comes first; None for a customer without repeat order, and when
    the instant lies beyond the last one a datetime holds (9999-12-31: never, in practice)."""
    crossing = crossing_T(params, inputs.x, inputs.t_x, threshold)
    if crossing is None:
        return None
    last = (datetime.max.replace(tzinfo=UTC) - inputs.origin) / DAY
    if not math.isfinite(crossing) or crossing >= last:
        return None
    micros = math.ceil(crossing * 86_400_000_000 - 1e-3)  # up to the microsecond, never before
    try:
        return inputs.origin + timedelta(microseconds=micros)
    except OverflowError:  # within a microsecond of datetime.max
        return None


# --- per shop, per customer ---------------------------------------------------------------


def _check_finite(shop_id: str, params: BgNbdParams, rows: Array, horizon: float) -> None:
    """FitError unless the fitted model predicts finite expected orders for every customer:
    data too regular to fit (every customer ordering at the same pace up to the fit, say) can
    give parameters at which the formulas lose every digit."""
    with np.errstate(all="ignore"):
        orders = expected_orders(params, horizon, rows[:, 0], rows[:, 1], rows[:, 2])
    bad = int(np.count_nonzero(~np.isfinite(orders)))
    if bad:
        raise FitError(
            f"shop {shop_id!r}: the fitted model (r={params.r:.4g}, alpha={params.alpha:.4g}, "
            f"a={params.a:.4g}, b={params.b:.4g}) predicts no finite number of orders for "
            f"{bad} of {len(rows)} customer histories: no model (the customers' orders may "
            "be too regular to fit)"
        )


def prediction_version(fitted_at: datetime) -> str:
    return f"p{_utc(fitted_at).strftime('%Y%m%dT%H%M%SZ')}"


def fit_shop(
    shop_id: str,
    inputs: Sequence[BgNbdInputs],
    fitted_at: datetime,
    min_repeat_buyers: int,
    clv_months: int = 12,
    annual_discount_rate: float = 0.1,
) -> PredictionModel:
    """Fit a shop's models over its customers' inputs; FitError (saying why) when the shop has
    fewer than ``min_repeat_buyers`` repeat buyers or the likelihood has no optimum. With a
    spend model, the CLV percentiles of the customers (``clv_months``, ``annual_discount_rate``)
    are kept with it."""
    started = time.perf_counter()
    repeat = sum(1 for i in inputs if i.x > 0)
    if repeat < max(min_repeat_buyers, 1):
        raise FitError(
            f"shop {shop_id!r} has {repeat} repeat buyers of {len(inputs)} customers, fewer "
            f"than {min_repeat_buyers}: no prediction model"
        )
    # One row per distinct (x, t_x, T), weighted by its number of customers.
    rows = np.array([(i.x, i.t_x, i.T) for i in inputs], dtype=np.float64)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    fit = fit_bgnbd(unique[:, 0], unique[:, 1], unique[:, 2], counts)
    _check_finite(shop_id, fit.params, unique, clv_months * MONTH_DAYS)
    spenders = [(i.x, i.monetary) for i in inputs if i.x > 0 and i.monetary > 0]
    gamma_gamma: GammaGammaParams | None = None
    if len(spenders) >= max(min_repeat_buyers, 1):
        spend = np.array(spenders, dtype=np.float64)
        try:
            gamma_gamma = fit_gamma_gamma(spend[:, 0], spend[:, 1])
        except FitError:
            gamma_gamma = None
    percentiles: tuple[float, ...] = ()
    if gamma_gamma is not None:
        values = clv(
            fit.params,
            gamma_gamma,
            [i.x for i in inputs],
            [i.t_x for i in inputs],
            [i.T for i in inputs],
            [i.monetary for i in inputs],
            clv_months,
            monthly_rate(annual_discount_rate),
        )
        percentiles = tuple(float(v) for v in np.percentile(values, np.arange(1, 100)))
    return PredictionModel(
        shop_id=shop_id,
        version=prediction_version(fitted_at),
        fitted_at=_utc(fitted_at),
        customers=len(inputs),
        repeat_buyers=repeat,
        bgnbd=fit.params,
        log_likelihood=fit.log_likelihood,
        gamma_gamma=gamma_gamma,
        fit_seconds=round(time.perf_counter() - started, 3),
        clv_months=clv_months,
        annual_discount_rate=annual_discount_rate,
        clv_percentiles=percentiles,
    )


def predict(
    model: PredictionModel,
    inputs: BgNbdInputs,
    horizon_days: float,
    clv_months: int,
    annual_discount_rate: float,
) -> CustomerPredictions:
    """One customer's predictions under a shop's model: the same formulas as the array
    functions above, on plain floats (it runs whenever a customer's figures are written)."""
    bg, gg = model.bgnbd, model.gamma_gamma
    x, t_x, T = inputs.x, inputs.t_x, inputs.T
    if abs(bg.a - 1.0) < A_NEAR_ONE:  # the interpolated case: the array functions
        return _predict_arrays(model, inputs, horizon_days, clv_months, annual_discount_rate)
    alive = p_alive_scalar(bg, x, t_x, T)
    orders = expected_orders_scalar(bg, horizon_days, x, T, alive)
    value: float | None = None
    if gg is not None:
        discount = 1.0 + monthly_rate(annual_discount_rate)
        spend = (gg.p * (gg.v + x * inputs.monetary)) / (gg.p * x + gg.q - 1.0)
        total, previous = 0.0, 0.0
        for i in range(1, clv_months + 1):
            upto = expected_orders_scalar(bg, MONTH_DAYS * i, x, T, alive)
            total += (upto - previous) / discount**i
            previous = upto
        value = spend * total
    return CustomerPredictions(alive, orders, value, model.version)


def _predict_arrays(
    model: PredictionModel,
    inputs: BgNbdInputs,
    horizon_days: float,
    clv_months: int,
    annual_discount_rate: float,
) -> CustomerPredictions:
    x, t_x, T = inputs.x, inputs.t_x, inputs.T
    alive = float(p_alive(model.bgnbd, x, t_x, T))
    orders = float(expected_orders(model.bgnbd, horizon_days, x, t_x, T))
    value: float | None = None
    if model.gamma_gamma is not None:
        rate = monthly_rate(annual_discount_rate)
        value = float(
            clv(model.bgnbd, model.gamma_gamma, x, t_x, T, inputs.monetary, clv_months, rate)
        )
    return CustomerPredictions(alive, orders, value, model.version)


def predictions_for(
    state: CustomerState,
    model: PredictionModel | None,
    at: datetime,
    horizon_days: float,
    clv_months: int,
    annual_discount_rate: float,
) -> CustomerPredictions | None:
    """A stored customer's predictions at ``at`` under their shop's model; None without a
    model or without a counted order. Computed from the state when read or written, never
    stored in it."""
    if model is None:
        return None
    inputs = bgnbd_inputs(state, at)
    if inputs is None:
        return None
    return predict(model, inputs, horizon_days, clv_months, annual_discount_rate)
