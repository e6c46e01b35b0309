"""Predictions per customer: P(alive) and expected orders (BG/NBD, Fader, Hardie and Lee 2005,
"Counting your customers the easy way"), spend per order (Gamma-Gamma, Fader, Hardie and Lee
2005, "RFM and CLV: using iso-value curves"), discounted customer lifetime value, and the exact
instant at which P(alive) falls below a threshold.

Every customer is summarised as (x, t_x, T) by ``bgnbd_inputs``: time in days; x = the number of
distinct UTC days after the first order day on which the customer ordered; t_x = days from the
first to the last order day; T = days from the start (00:00 UTC) of the first order day to the
instant of evaluation. Only orders that count (not cancelled, not refunded in full) are used.

The models are fitted by maximum likelihood (scipy.optimize on the closed-form log-likelihoods,
computed in log space, over log-transformed parameters). Everything here is pure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1

from models.state import CustomerState, order_days

Array = npt.NDArray[np.float64]
DAY: Final = timedelta(days=1)
# Days per step of the CLV sum (one month, as in the usual formulation).
MONTH_DAYS: Final = 30.0


class BgNbdParams(BaseModel):
    """The four BG/NBD parameters: purchase rates are gamma(r, alpha) distributed across
    customers, the probability of dropping out after a purchase beta(a, b)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: float = Field(gt=0)
    alpha: float = Field(gt=0)
    a: float = Field(gt=0)
    b: float = Field(gt=0)


class GammaGammaParams(BaseModel):
    """The Gamma-Gamma spend model: spend per order is gamma(p, nu) around a customer's mean,
    nu gamma(q, v) distributed across customers (q > 1: the mean spend is finite)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p: float = Field(gt=0)
    q: float = Field(gt=1)
    v: float = Field(gt=0)


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


class FitError(ValueError):
    """A model could not be fitted (too little data, or no optimum)."""


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


# --- BG/NBD -------------------------------------------------------------------------------


def _arrays(*values: npt.ArrayLike) -> list[Array]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def bgnbd_log_likelihood(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> Array:
    """Each customer's log-likelihood (Fader, Hardie and Lee 2005, equation 6), in log space."""
    return _log_likelihood(params.r, params.alpha, params.a, params.b, *_arrays(x, t_x, T))


def _log_likelihood(
    r: float, alpha: float, a: float, b: float, x: Array, t_x: Array, T: Array
) -> Array:
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.where(
        repeat,
        math.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    result: Array = a1 + a2 + np.logaddexp(a3, a4)
    return result


class BgNbdFit(NamedTuple):
    params: BgNbdParams
    log_likelihood: float
    iterations: int


def fit_bgnbd(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
) -> BgNbdFit:
    """Maximum-likelihood BG/NBD parameters (mean log-likelihood, optionally weighted: one row
    per distinct (x, t_x, T) with its number of customers)."""
    xs, txs, Ts = _arrays(x, t_x, T)
    w = np.ones_like(xs) if weights is None else np.asarray(weights, dtype=np.float64)
    _check_inputs(xs, txs, Ts, w)
    if not np.any(xs > 0):
        raise FitError("no repeat buyer: BG/NBD cannot be fitted")
    total = float(w.sum())

    def objective(theta: Array) -> float:
        r, alpha, a, b = params = np.exp(theta)
        if not (np.all(np.isfinite(params)) and np.all(params > 0)):
            return math.inf  # a parameter ran off to 0 or infinity: no optimum there
        ll = _log_likelihood(r, alpha, a, b, xs, txs, Ts)
        return -float(np.dot(w, ll)) / total

    result = _minimize(objective, np.zeros(4))
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    params = BgNbdParams(r=r, alpha=alpha, a=a, b=b)
    return BgNbdFit(params, -float(result.fun), int(result.nit))


def _check_inputs(x: Array, t_x: Array, T: Array, w: Array) -> None:
    if not (x.shape == t_x.shape == T.shape == w.shape) or x.ndim != 1 or x.size == 0:
        raise FitError("x, t_x, T (and weights) must be non-empty sequences of one length")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t_x)) and np.all(np.isfinite(T))):
        raise FitError("x, t_x and T must be finite")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T) or np.any(w <= 0):
        raise FitError("need x >= 0, 0 <= t_x <= T and positive weights")


class _Optimum(NamedTuple):
    x: Array
    fun: float
    nit: int


def _minimize(objective: Callable[[Array], float], start: Array) -> _Optimum:
    # On the log-parameters, so the parameters stay positive without bounds: L-BFGS-B, and
    # Nelder-Mead from where it stopped when it reports no convergence.
    best = minimize(objective, start, method="L-BFGS-B", options={"maxiter": 2000})
    iterations = int(best.nit)
    if not best.success or not math.isfinite(float(best.fun)):
        fallback = minimize(
            objective,
            best.x if np.all(np.isfinite(best.x)) else start,
            method="Nelder-Mead",
            options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-12},
        )
        iterations += int(fallback.nit)
        if not math.isfinite(float(best.fun)) or float(fallback.fun) <= float(best.fun):
            best = fallback
    theta = np.asarray(best.x, dtype=np.float64)
    if not np.all(np.isfinite(theta)) or not math.isfinite(float(best.fun)):
        raise FitError("the likelihood has no finite optimum")
    if np.any(np.abs(theta) > 30.0):  # a parameter ran off towards 0 or infinity
        raise FitError("the likelihood has no interior optimum (a parameter diverges)")
    return _Optimum(theta, float(best.fun), iterations)


def _log_odds_dead(params: BgNbdParams, x: Array, t_x: Array, T: Array) -> Array:
    """log((1 - P(alive)) / P(alive)) for repeat buyers (meaningless where x = 0)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    result: Array = (r + x) * (np.log(alpha + T) - np.log(alpha + t_x)) + (
        math.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0)
    )
    return result


def p_alive(params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> Array:
    """P(alive | x, t_x, T): 1 for a customer without repeat order (BG/NBD assumes nobody drops
    out before a repeat purchase)."""
    xs, txs, Ts = _arrays(x, t_x, T)
    result: Array = np.where(xs > 0, expit(-_log_odds_dead(params, xs, txs, Ts)), 1.0)
    return result


def expected_orders(
    params: BgNbdParams,
    t: npt.ArrayLike,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
) -> Array:
    """Expected number of orders in the next ``t`` days (Fader, Hardie and Lee 2005,
    equation 10), with the Gaussian hypergeometric function in its Euler-transformed form
    (small parameters, no overflow for large x) and P(alive) in log space."""
    ts, xs, txs, Ts = _arrays(t, x, t_x, T)
    a = params.a
    if abs(a - 1.0) < _A_NEAR_ONE:
        # The closed form divides by (a - 1): near a = 1 it is interpolated between two
        # evaluations either side (the expectation is smooth in a).
        lo = params.model_copy(update={"a": 1.0 - _A_NEAR_ONE})
        hi = params.model_copy(update={"a": 1.0 + _A_NEAR_ONE})
        f_lo = _expected_orders(lo, ts, xs, txs, Ts)
        f_hi = _expected_orders(hi, ts, xs, txs, Ts)
        share = (a - lo.a) / (hi.a - lo.a)
        interpolated: Array = f_lo + share * (f_hi - f_lo)
        return interpolated
    return _expected_orders(params, ts, xs, txs, Ts)


_A_NEAR_ONE: Final = 1e-4


def _expected_orders(params: BgNbdParams, t: Array, x: Array, t_x: Array, T: Array) -> Array:
    c = params.a + params.b + x - 1.0
    hyp = _decay(params, t, x, T)
    first = c / (params.a - 1.0)
    result: Array = first * (1.0 - hyp) * p_alive(params, x, t_x, T)
    return result


def _decay(params: BgNbdParams, t: Array, x: Array, T: Array) -> Array:
    """2F1(r+x, b+x; c; z) (1-z)^(r+x) with c = a+b+x-1 and z = t / (alpha+T+t), the term of
    the expected orders. First in its Euler form 2F1(c-r-x, c-b-x; c; z) (1-z)^(a-1), then,
    where that is not usable (with large a and b the function overflows while the power
    underflows: inf * 0), in its Pfaff form 2F1(r+x, a-1; c; z/(z-1)), then as written. A
    value is usable when finite and the expected orders it gives are not negative."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    c = a + b + x - 1.0
    z = t / (alpha + T + t)
    with np.errstate(all="ignore"):
        value = np.asarray(
            _hyp2f1(a + b - 1.0 - r, a - 1.0, c, z) * np.exp((a - 1.0) * np.log1p(-z)),
            dtype=np.float64,
        )
        value, c_b, z_b, x_b = (
            np.array(v, dtype=np.float64) for v in np.broadcast_arrays(value, c, z, x)
        )
        for form in (_pfaff, _as_written):
            bad = ~_usable(value, c_b, a)
            if not np.any(bad):
                break
            value[bad] = form(params, x_b[bad], c_b[bad], z_b[bad])
    return value


def _usable(value: Array, c: Array, a: float) -> npt.NDArray[np.bool_]:
    ok: npt.NDArray[np.bool_] = np.isfinite(value) & (c * (1.0 - value) / (a - 1.0) >= -1e-12)
    return ok


def _pfaff(params: BgNbdParams, x: Array, c: Array, z: Array) -> Array:
    result: Array = np.asarray(hyp2f1(params.r + x, params.a - 1.0, c, z / (z - 1.0)))
    return result


def _as_written(params: BgNbdParams, x: Array, c: Array, z: Array) -> Array:
    hyp = np.asarray(hyp2f1(params.r + x, params.b + x, c, z))
    result: Array = hyp * np.exp((params.r + x) * np.log1p(-z))
    return result


def _hyp2f1(p: float, q: float, c: Array, z: Array) -> Array:
    """scipy's 2F1, evaluated again with c moved by a relative 1e-9 where it fails: some integer
    parameter combinations (c - p - q a positive integer) give inf where the function is
    finite; the nudge changes the value by about as much."""
    value: Array = np.asarray(hyp2f1(p, q, c, z), dtype=np.float64)
    failed = ~np.isfinite(value)
    if np.any(failed):
        c_b, z_b = np.broadcast_arrays(c, z)
        value = np.array(value, copy=True)
        value[failed] = hyp2f1(p, q, c_b[failed] * (1.0 + 1e-9), z_b[failed])
    return value


def crossing_T(params: BgNbdParams, x: int, t_x: float, threshold: float) -> float | None:
    """The T at which P(alive) falls to ``threshold`` (0 < threshold < 1): solves
    1 / (1 + a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)) = threshold for T. ``t_x`` when P(alive)
    is already at or below it right after the last order; None for a customer without repeat
    order (P(alive) stays 1); ``math.inf`` when it lies beyond what a float holds."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("the threshold must lie strictly between 0 and 1")
    if x <= 0:
        return None
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_ratio = math.log((1.0 - threshold) / threshold) - math.log(a / (b + x - 1.0))
    if log_ratio <= 0.0:
        return t_x
    # (alpha + T) = (alpha + t_x) exp(log_ratio / (r + x)); expm1 keeps T - t_x exact for
    # small ratios.
    exponent = log_ratio / (r + x)
    if exponent > _MAX_EXPONENT:
        return math.inf
    return t_x + (alpha + t_x) * math.expm1(exponent)


# math.expm1 raises OverflowError above about 709.78.
_MAX_EXPONENT: Final = 700.0


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


# --- Gamma-Gamma --------------------------------------------------------------------------


def gamma_gamma_log_likelihood(
    params: GammaGammaParams, x: npt.ArrayLike, monetary: npt.ArrayLike
) -> Array:
    """Each repeat buyer's log-likelihood of their mean spend (up to terms without
    parameters)."""
    xs, ms = _arrays(x, monetary)
    return _gg_log_likelihood(params.p, params.q, params.v, xs, ms)


def _gg_log_likelihood(p: float, q: float, v: float, x: Array, m: Array) -> Array:
    px = p * x
    result: Array = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * math.log(v)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(x * m + v)
    )
    return result


def fit_gamma_gamma(
    x: npt.ArrayLike, monetary: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma parameters over repeat buyers with positive spend (the
    rows given must be those)."""
    xs, ms = _arrays(x, monetary)
    w = np.ones_like(xs) if weights is None else np.asarray(weights, dtype=np.float64)
    if xs.ndim != 1 or xs.size == 0 or xs.shape != ms.shape or ms.shape != w.shape:
        raise FitError("x and monetary must be non-empty sequences of one length")
    if np.any(xs <= 0) or np.any(ms <= 0) or not np.all(np.isfinite(ms)):
        raise FitError("Gamma-Gamma is fitted on repeat buyers with positive spend only")
    total = float(w.sum())
    # The spend scale enters through v only: start it at the mean spend.
    start = np.array([0.0, 0.0, math.log(float(np.dot(w, ms)) / total)])

    def objective(theta: Array) -> float:
        p, q, v = np.exp(theta)
        return -float(np.dot(w, _gg_log_likelihood(p, q, v, xs, ms))) / total

    result = _minimize(objective, start)
    p, q, v = (float(value) for value in np.exp(result.x))
    if q <= 1.0:
        raise FitError(f"the spend model has no finite mean (q = {q:.3g} <= 1)")
    return GammaGammaParams(p=p, q=q, v=v)


def expected_spend(params: GammaGammaParams, x: npt.ArrayLike, monetary: npt.ArrayLike) -> Array:
    """Expected spend per order given x repeat orders of mean spend ``monetary`` (the
    population mean for x = 0)."""
    xs, ms = _arrays(x, monetary)
    p, q, v = params.p, params.q, params.v
    result: Array = (p * (v + xs * ms)) / (p * xs + q - 1.0)
    return result


# --- CLV ----------------------------------------------------------------------------------


def monthly_rate(annual_discount_rate: float) -> float:
    """The discount rate per month equivalent to an annual one."""
    if annual_discount_rate <= -1.0:
        raise ValueError("the annual discount rate must be above -1")
    return math.expm1(math.log1p(annual_discount_rate) / 12.0)


def clv(
    bgnbd: BgNbdParams,
    gamma_gamma: GammaGammaParams,
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    T: npt.ArrayLike,
    monetary: npt.ArrayLike,
    months: int,
    discount_per_month: float,
    month: float = MONTH_DAYS,
) -> Array:
    """Discounted expected spend over the next ``months`` months: sum over months i of the
    expected orders in month i times the expected spend per order, discounted by
    (1 + discount_per_month)^i. ``month`` is a month's length in the models' time unit."""
    if months < 0:
        raise ValueError("months must not be negative")
    xs, txs, Ts, ms = _arrays(x, t_x, T, monetary)
    spend = expected_spend(gamma_gamma, xs, ms)
    total = np.zeros(np.broadcast(xs, txs, Ts).shape)
    previous = np.zeros_like(total)
    for i in range(1, months + 1):
        upto = expected_orders(bgnbd, i * month, xs, txs, Ts)
        total = total + spend * (upto - previous) / (1.0 + discount_per_month) ** i
        previous = upto
    return total


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
    if abs(bg.a - 1.0) < _A_NEAR_ONE:  # the interpolated case: the array functions
        return _predict_arrays(model, inputs, horizon_days, clv_months, annual_discount_rate)
    alive = _p_alive_scalar(bg, x, t_x, T)
    orders = _expected_orders_scalar(bg, horizon_days, x, T, alive)
    value: float | None = None
    if gg is not None:
        discount = 1.0 + monthly_rate(annual_discount_rate)
        spend = (gg.p * (gg.v + x * inputs.monetary)) / (gg.p * x + gg.q - 1.0)
        total, previous = 0.0, 0.0
        for i in range(1, clv_months + 1):
            upto = _expected_orders_scalar(bg, MONTH_DAYS * i, x, T, alive)
            total += (upto - previous) / discount**i
            previous = upto
        value = spend * total
    return CustomerPredictions(alive, orders, value, model.version)


def _p_alive_scalar(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
    if x <= 0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_odds = (r + x) * (math.log(alpha + T) - math.log(alpha + t_x)) + (
        math.log(a) - math.log(b + x - 1.0)
    )
    if log_odds > 0.0:  # expit(-log_odds) without overflow either way
        e = math.exp(-log_odds)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(log_odds))


def _expected_orders_scalar(params: BgNbdParams, t: float, x: int, T: float, alive: float) -> float:
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    c = a + b + x - 1.0
    z = t / (alpha + T + t)
    hyp = float(hyp2f1(a + b - 1.0 - r, a - 1.0, c, z))
    if not math.isfinite(hyp):  # see _hyp2f1
        hyp = float(hyp2f1(a + b - 1.0 - r, a - 1.0, c * (1.0 + 1e-9), z))
    if math.isfinite(hyp):
        hyp *= math.exp((a - 1.0) * math.log1p(-z))
    if not (math.isfinite(hyp) and c * (1.0 - hyp) / (a - 1.0) >= -1e-12):
        hyp = float(_decay(params, *_arrays(t, x, T))[()])  # see _decay
    return c / (a - 1.0) * (1.0 - hyp) * alive


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
