"""Spend per order (Gamma-Gamma, Fader, Hardie and Lee 2005, "RFM and CLV: using iso-value
curves") and discounted customer lifetime value from BG/NBD's expected orders. Pure.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import gammaln

from models.bgnbd import (
    Array,
    BgNbdParams,
    FitError,
    as_arrays,
    expected_orders,
    minimize_log_params,
)

# Days per step of the CLV sum (one month, as in the usual formulation).
MONTH_DAYS: Final = 30.0


class GammaGammaParams(BaseModel):
    """The Gamma-Gamma spend model: spend per order is gamma(p, nu) around a customer's mean,
    nu gamma(q, v) distributed across customers (q > 1: the mean spend is finite)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p: float = Field(gt=0)
    q: float = Field(gt=1)
    v: float = Field(gt=0)


def gamma_gamma_log_likelihood(
    params: GammaGammaParams, x: npt.ArrayLike, monetary: npt.ArrayLike
) -> Array:
    """Each repeat buyer's log-likelihood of their mean spend (up to terms without
    parameters)."""
    xs, ms = as_arrays(x, monetary)
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
    xs, ms = as_arrays(x, monetary)
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

    result = minimize_log_params(objective, start)
    p, q, v = (float(value) for value in np.exp(result.x))
    if q <= 1.0:
        raise FitError(f"the spend model has no finite mean (q = {q:.3g} <= 1)")
    return GammaGammaParams(p=p, q=q, v=v)


def expected_spend(params: GammaGammaParams, x: npt.ArrayLike, monetary: npt.ArrayLike) -> Array:
    """Expected spend per order given x repeat orders of mean spend ``monetary`` (the
    population mean for x = 0)."""
    xs, ms = as_arrays(x, monetary)
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
    xs, txs, Ts, ms = as_arrays(x, t_x, T, monetary)
    spend = expected_spend(gamma_gamma, xs, ms)
    total = np.zeros(np.broadcast(xs, txs, Ts).shape)
    previous = np.zeros_like(total)
    for i in range(1, months + 1):
        upto = expected_orders(bgnbd, i * month, xs, txs, Ts)
        total = total + spend * (upto - previous) / (1.0 + discount_per_month) ** i
        previous = upto
    return total
