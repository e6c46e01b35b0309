"""BG/NBD (Fader, Hardie and Lee 2005, "Counting your customers the easy way"): the parameters,
the log-likelihood and its maximum, P(alive), expected orders, and the time at which P(alive)
falls to a threshold; array functions, and scalar ones for one customer.

Time is in the caller's unit (days in the product). Fitted by maximum likelihood (scipy.optimize
on the closed-form log-likelihood, computed in log space, over log-transformed parameters).
Everything here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1

Array = npt.NDArray[np.float64]


class FitError(ValueError):
    """A model could not be fitted (too little data, or no optimum)."""


class BgNbdParams(BaseModel):
    """The four BG/NBD parameters: purchase rates are gamma(r, alpha) distributed across
    customers, the probability of dropping out after a purchase beta(a, b)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: float = Field(gt=0)
    alpha: float = Field(gt=0)
    a: float = Field(gt=0)
    b: float = Field(gt=0)


def as_arrays(*values: npt.ArrayLike) -> list[Array]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def bgnbd_log_likelihood(
    params: BgNbdParams, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike
) -> Array:
    """Each customer's log-likelihood (Fader, Hardie and Lee 2005, equation 6), in log space."""
    return _log_likelihood(params.r, params.alpha, params.a, params.b, *as_arrays(x, t_x, T))


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
    xs, txs, Ts = as_arrays(x, t_x, T)
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

    result = minimize_log_params(objective, np.zeros(4))
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


class Optimum(NamedTuple):
    x: Array
    fun: float
    nit: int


def minimize_log_params(objective: Callable[[Array], float], start: Array) -> Optimum:
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
    return Optimum(theta, float(best.fun), iterations)


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
    xs, txs, Ts = as_arrays(x, t_x, T)
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
    ts, xs, txs, Ts = as_arrays(t, x, t_x, T)
    a = params.a
    if abs(a - 1.0) < A_NEAR_ONE:
        # The closed form divides by (a - 1): near a = 1 it is interpolated between two
        # evaluations either side (the expectation is smooth in a).
        lo = params.model_copy(update={"a": 1.0 - A_NEAR_ONE})
        hi = params.model_copy(update={"a": 1.0 + A_NEAR_ONE})
        f_lo = _expected_orders(lo, ts, xs, txs, Ts)
        f_hi = _expected_orders(hi, ts, xs, txs, Ts)
        share = (a - lo.a) / (hi.a - lo.a)
        interpolated: Array = f_lo + share * (f_hi - f_lo)
        return interpolated
    return _expected_orders(params, ts, xs, txs, Ts)


A_NEAR_ONE: Final = 1e-4


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


def p_alive_scalar(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
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


def expected_orders_scalar(params: BgNbdParams, t: float, x: int, T: float, alive: float) -> float:
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    c = a + b + x - 1.0
    z = t / (alpha + T + t)
    hyp = float(hyp2f1(a + b - 1.0 - r, a - 1.0, c, z))
    if not math.isfinite(hyp):  # see _hyp2f1
        hyp = float(hyp2f1(a + b - 1.0 - r, a - 1.0, c * (1.0 + 1e-9), z))
    if math.isfinite(hyp):
        hyp *= math.exp((a - 1.0) * math.log1p(-z))
    if not (math.isfinite(hyp) and c * (1.0 - hyp) / (a - 1.0) >= -1e-12):
        hyp = float(_decay(params, *as_arrays(t, x, T))[()])  # see _decay
    return c / (a - 1.0) * (1.0 - hyp) * alive
