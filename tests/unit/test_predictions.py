"""The prediction models: inputs from a state, numerics at the edges, the crossing instant, fits
that recover the parameters they were simulated with, and the per-shop fit's refusals."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from models.bgnbd import (
    BgNbdParams,
    FitError,
    bgnbd_log_likelihood,
    crossing_T,
    expected_orders,
    fit_bgnbd,
    p_alive,
)
from models.predictions import (
    BgNbdInputs,
    bgnbd_inputs,
    fit_shop,
    likely_churned_at,
    predict,
)
from models.spend import GammaGammaParams, clv, expected_spend, monthly_rate
from tests.factories import T0, at, cancelled, placed, prediction_model, refunded
from tests.unit.core import fold

CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
T_MAX = 20 * 365.25  # twenty years, in days

params = st.builds(
    BgNbdParams,
    r=st.floats(0.01, 50.0),
    alpha=st.floats(0.01, 10_000.0),
    a=st.floats(0.01, 50.0),
    b=st.floats(0.01, 50.0),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, float, float]:
    x = draw(st.integers(0, 10_000))
    T = draw(st.floats(0.0, T_MAX))
    t_x = draw(st.floats(0.0, T)) if x else 0.0
    return x, t_x, T


# --- inputs from a state --------------------------------------------------------------------


def test_inputs_count_distinct_utc_days_after_the_first_and_skip_what_does_not_count() -> None:
    # T0 is 12:00 UTC; day 0.4 is 21:36 the same day (the same order day), day 3 a repeat day
    # with two orders, day 5 cancelled, day 7 refunded in full, day 10 a repeat day.
    state, _ = fold(
        [
            placed("c", "o1", 0, total=1000),
            placed("c", "o2", 0.4, total=500),
            placed("c", "o3", 3, total=2000),
            placed("c", "o4", 3.1, total=1000),
            placed("c", "o5", 5, total=9000),
            cancelled("c", "o5", 5.5),
            placed("c", "o6", 7, total=4000),
            refunded("c", "o6", 7.5, total=4000),
            placed("c", "o7", 10, total=6000),
        ]
    )
    inputs = bgnbd_inputs(state, at(20))
    assert inputs is not None
    assert inputs.x == 2
    assert inputs.t_x == 10.0
    assert inputs.origin == datetime(2025, 1, 1, tzinfo=UTC)
    # from 00:00 of the first order day to 12:00 on day 20
    assert inputs.T == 20.5
    assert inputs.monetary == pytest.approx((3000 + 6000) / 2)


def test_a_customer_with_orders_folded_out_of_the_window_keeps_every_order_day() -> None:
    # 50 orders on distinct days (some two a day): more than the state's window of 32 records
    events = [placed("c", f"o{n}", n * 2, total=1000 + n) for n in range(50)]
    events += [placed("c", f"p{n}", n * 2 + 0.2, total=500) for n in range(0, 50, 10)]
    state, _ = fold(sorted(events, key=lambda e: e["occurred_at"]))
    assert state.earlier is not None  # orders were folded
    inputs = bgnbd_inputs(state, at(200))
    assert inputs is not None
    assert (inputs.x, inputs.t_x) == (49, 98.0)  # 50 order days: 49 repeat days
    assert inputs.T == 200.5
    total = sum(1000 + n for n in range(50)) + 5 * 500
    assert inputs.monetary == pytest.approx(total / 50)  # mean per order day (documented)


def test_a_one_time_buyer_has_no_repeat_and_no_state_without_counted_orders() -> None:
    single, _ = fold([placed("c", "o1", 0, total=1000)])
    assert bgnbd_inputs(single, at(3)) == BgNbdInputs(
        0, 0.0, 3.5, 0.0, datetime(2025, 1, 1, tzinfo=UTC)
    )
    gone, _ = fold([placed("c", "o1", 0), cancelled("c", "o1", 1)])
    assert bgnbd_inputs(gone, at(3)) is None


def test_inputs_refuse_an_instant_before_the_last_order_day() -> None:
    state, _ = fold([placed("c", "o1", 0), placed("c", "o2", 5)])
    with pytest.raises(ValueError, match="before the customer's last order day"):
        bgnbd_inputs(state, at(3))


# --- numerics ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(params, histories())
def test_p_alive_is_a_probability_everywhere(
    p: BgNbdParams, history: tuple[int, float, float]
) -> None:
    x, t_x, T = history
    value = float(p_alive(p, x, t_x, T))
    assert 0.0 <= value <= 1.0
    if x == 0:
        assert value == 1.0


@settings(max_examples=300, deadline=None)
@given(params, histories(), st.floats(0.0, 3650.0))
def test_expected_orders_are_finite_and_non_negative(
    p: BgNbdParams, history: tuple[int, float, float], horizon: float
) -> None:
    x, t_x, T = history
    value = float(expected_orders(p, horizon, x, t_x, T))
    assert math.isfinite(value)
    assert value >= -1e-9 * max(1.0, x)


@settings(max_examples=200, deadline=None)
@given(params, histories())
def test_the_log_likelihood_is_finite(p: BgNbdParams, history: tuple[int, float, float]) -> None:
    x, t_x, T = history
    assert math.isfinite(float(bgnbd_log_likelihood(p, [x], [t_x], [T])[0]))


@settings(max_examples=200, deadline=None)
@given(params, histories(), st.floats(1.0, 1000.0))
def test_p_alive_only_falls_as_time_passes(
    p: BgNbdParams, history: tuple[int, float, float], later: float
) -> None:
    x, t_x, T = history
    assert float(p_alive(p, x, t_x, T + later)) <= float(p_alive(p, x, t_x, T))


def test_extreme_histories_keep_their_known_limits() -> None:
    # 10,000 repeat days, last one twenty years ago: certainly gone, without overflow.
    assert float(p_alive(CDNOW, 10_000, 1.0, T_MAX)) == 0.0
    assert float(expected_orders(CDNOW, 365, 10_000, 1.0, T_MAX)) == pytest.approx(0.0, abs=1e-12)
    # 10,000 repeat days up to today: alive, about 10000 / 7305 orders a day ahead.
    alive = float(p_alive(CDNOW, 10_000, T_MAX, T_MAX))
    assert alive == pytest.approx(1.0, abs=1e-3)
    rate = float(expected_orders(CDNOW, 1.0, 10_000, T_MAX, T_MAX))
    assert rate == pytest.approx((CDNOW.r + 10_000) / (CDNOW.alpha + T_MAX), rel=2e-3)


def test_expected_orders_are_continuous_across_a_equal_to_one() -> None:
    values = [
        float(expected_orders(CDNOW.model_copy(update={"a": a}), 30, 3, 20, 40))
        for a in (1 - 2e-4, 1 - 5e-5, 1.0, 1 + 5e-5, 1 + 2e-4)
    ]
    assert all(math.isfinite(v) for v in values)
    assert values == sorted(values, reverse=True) or values == sorted(values)
    assert values[2] == pytest.approx((values[0] + values[4]) / 2, rel=1e-5)


def test_expected_orders_and_clv_stay_finite_when_a_and_b_are_large() -> None:
    # A shop's fit over 200 customers gave these (dropping out is well known: a and b in the
    # thousands). In the Euler form 2F1 overflows while (1-z)^(a-1) underflows: the CLV of
    # recent customers came out as -inf or NaN.
    bg = BgNbdParams(r=1.405, alpha=93.44, a=674.6, b=11_550.0)
    gg = GammaGammaParams(p=3.288, q=28_920.0, v=9.156e7)
    model = prediction_model(
        bg, shop_id="s", version="v", fitted_at=T0, customers=200, repeat_buyers=177,
        log_likelihood=0.0, gamma_gamma=gg,
    )  # fmt: skip
    for x, t_x, T in ((0, 0.0, 1.0), (0, 0.0, 10.0), (2, 5.0, 10.0), (5, 25.0, 30.0)):
        orders = expected_orders(bg, [30.0, 90.0, 360.0, 3650.0], x, t_x, T)
        assert np.all(np.isfinite(orders))
        assert np.all(np.diff(orders) > 0)  # more orders the longer the horizon
        got = predict(model, BgNbdInputs(x, t_x, T, 3000.0, T0), 90.0, 12, 0.1)
        assert got.predicted_clv is not None
        assert math.isfinite(got.predicted_clv)
        assert got.predicted_clv > 0
        assert got.expected_orders == pytest.approx(float(orders[1]), rel=1e-9)
    # Where the Euler form is finite, the other forms agree with it.
    assert float(expected_orders(bg, 90.0, 0, 0.0, 200.0)) == pytest.approx(
        (bg.a + bg.b - 1) / (bg.a - 1) * (1 - 0.9767275231192812), rel=1e-9
    )


# --- the crossing instant ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(params, st.integers(1, 10_000), st.floats(0.0, T_MAX), st.floats(0.01, 0.99))
def test_the_crossing_T_is_where_p_alive_meets_the_threshold(
    p: BgNbdParams, x: int, t_x: float, threshold: float
) -> None:
    age = crossing_T(p, x, t_x, threshold)
    assert age is not None
    assert age >= t_x
    assume(age < 1e9)
    if age == t_x:  # already at or below right after the last order
        assert float(p_alive(p, x, t_x, t_x)) <= threshold + 1e-12
        return
    assert float(p_alive(p, x, t_x, age)) == pytest.approx(threshold, rel=1e-8, abs=1e-12)
    step = max(1e-6, age * 1e-9)
    assert float(p_alive(p, x, t_x, age - step)) >= threshold - 1e-12
    assert float(p_alive(p, x, t_x, age + step)) <= threshold + 1e-12


def test_the_churn_instant_is_exact_to_the_microsecond() -> None:
    state, _ = fold([placed("c", "o1", 0), placed("c", "o2", 14), placed("c", "o3", 30)])
    inputs = bgnbd_inputs(state, at(30))
    assert inputs is not None
    instant = likely_churned_at(CDNOW, inputs, 0.3)
    assert instant is not None
    T_star = crossing_T(CDNOW, 2, 30.0, 0.3)
    assert T_star is not None
    assert instant == inputs.origin + timedelta(microseconds=math.ceil(T_star * 86_400e6))

    def alive(when: datetime) -> float:
        later = bgnbd_inputs(state, when)
        assert later is not None
        return float(p_alive(CDNOW, later.x, later.t_x, later.T))

    assert alive(instant) <= 0.3
    assert alive(instant - timedelta(seconds=1)) > 0.3
    # independently: solve 1 / (1 + a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)) = 0.3
    r, alpha, a, b = CDNOW.r, CDNOW.alpha, CDNOW.a, CDNOW.b
    expected_T = (alpha + 30) * ((0.7 / 0.3) * (b + 1) / a) ** (1 / (r + 2)) - alpha
    assert (instant - inputs.origin) / timedelta(days=1) == pytest.approx(expected_T, abs=1e-10)


def test_a_crossing_beyond_the_year_9999_is_no_crossing() -> None:
    # Rare drop-outs (a / b small) and a slow purchase rate (alpha large): P(alive) takes
    # millions of years to fall to the threshold. This raised OverflowError, which failed every
    # evaluation of the shop's repeat buyers (their orders were dead-lettered).
    slow = BgNbdParams(r=0.5, alpha=1e6, a=0.5, b=100.0)
    one = BgNbdInputs(1, 10.0, 20.0, 0.0, T0)
    T = crossing_T(slow, 1, 10.0, 0.3)
    assert T is not None and T > 3e6
    assert likely_churned_at(slow, one, 0.3) is None
    # An exponent beyond what exp can hold: an infinite T, no instant.
    slower = slow.model_copy(update={"r": 0.01})
    assert crossing_T(slower, 1, 10.0, 1e-320) == math.inf
    assert likely_churned_at(slower, one, 1e-320) is None
    # A crossing before 9999 still has its instant.
    assert likely_churned_at(slow, BgNbdInputs(5, 10.0, 20.0, 0.0, T0), 0.3) is not None


def test_one_time_buyers_never_cross_and_the_threshold_is_checked() -> None:
    assert crossing_T(CDNOW, 0, 0.0, 0.3) is None
    assert likely_churned_at(CDNOW, BgNbdInputs(0, 0.0, 5.0, 0.0, T0), 0.3) is None
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            crossing_T(CDNOW, 2, 5.0, bad)


# --- fits -------------------------------------------------------------------------------------


def _simulate(p: BgNbdParams, customers: int, horizon: float, seed: int) -> np.ndarray:
    """(x, t_x, T) of customers drawn from the BG/NBD process itself."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(customers):
        rate = rng.gamma(p.r, 1 / p.alpha)
        drop = rng.beta(p.a, p.b)
        T = float(rng.uniform(horizon / 4, horizon))
        t, x, t_x = 0.0, 0, 0.0
        while True:
            t += rng.exponential(1 / rate)
            if t > T:
                break
            x, t_x = x + 1, t
            if rng.random() < drop:
                break
        rows.append((x, t_x, T))
    return np.array(rows)


def test_a_fit_recovers_the_parameters_it_was_simulated_with() -> None:
    truth = BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=3.0)
    data = _simulate(truth, 6000, 365.0, seed=7)
    fitted = fit_bgnbd(data[:, 0], data[:, 1], data[:, 2]).params
    assert fitted.r == pytest.approx(truth.r, rel=0.15)
    assert fitted.alpha == pytest.approx(truth.alpha, rel=0.25)
    assert fitted.a == pytest.approx(truth.a, rel=0.35)
    assert fitted.b == pytest.approx(truth.b, rel=0.5)


def test_fits_refuse_what_they_cannot_use() -> None:
    with pytest.raises(FitError, match="no repeat buyer"):
        fit_bgnbd([0, 0], [0, 0], [10, 20])
    with pytest.raises(FitError, match="0 <= t_x <= T"):
        fit_bgnbd([1, 2], [30, 5], [10, 20])
    with pytest.raises(FitError, match="non-empty"):
        fit_bgnbd([], [], [])


def test_a_shop_with_too_few_repeat_buyers_keeps_no_model() -> None:
    inputs = [BgNbdInputs(1, 5.0, 30.0, 100.0, T0)] * 3 + [BgNbdInputs(0, 0.0, 30.0, 0.0, T0)]
    with pytest.raises(
        FitError, match="shop 'web' has 3 repeat buyers of 4 customers, fewer than 30"
    ):
        fit_shop("web", inputs, at(30), min_repeat_buyers=30)


def test_a_shop_whose_customers_order_too_regularly_to_fit_keeps_no_model() -> None:
    """Every customer ordering weekly up to the fit (a subscription): the likelihood runs off
    to parameters at which no expected number of orders is finite; refused, saying why."""
    rng = np.random.default_rng(1)
    inputs = []
    for _ in range(60):
        weeks = int(rng.integers(2, 40))
        inputs.append(BgNbdInputs(weeks, 7.0 * weeks, 7.0 * weeks + rng.uniform(0, 3), 5e3, T0))
    with pytest.raises(FitError, match=r"predicts no finite number of orders for 60 of 60"):
        fit_shop("subs", inputs, at(300), min_repeat_buyers=20)


def test_a_shop_model_predicts_like_the_formulas() -> None:
    data = _simulate(BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=3.0), 1500, 365.0, seed=3)
    rng = np.random.default_rng(5)
    inputs = [
        BgNbdInputs(int(x), float(t_x), float(T), float(rng.gamma(4.0, 1000.0)) if x else 0.0, T0)
        for x, t_x, T in data
    ]
    fitted_at = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    model = fit_shop("web", inputs, fitted_at, min_repeat_buyers=30)
    assert model.version == "p20260301T060000Z"
    assert model.customers == 1500
    assert model.repeat_buyers == sum(1 for i in inputs if i.x)
    assert model.gamma_gamma is not None
    one = next(i for i in inputs if i.x >= 2)
    got = predict(model, one, 90.0, 12, 0.1)
    assert got.model_version == model.version
    assert got.p_alive == pytest.approx(
        float(p_alive(model.bgnbd, one.x, one.t_x, one.T)), rel=1e-12
    )
    assert got.expected_orders == pytest.approx(
        float(expected_orders(model.bgnbd, 90.0, one.x, one.t_x, one.T)), rel=1e-12
    )
    manual = 0.0
    spend = float(expected_spend(model.gamma_gamma, one.x, one.monetary))
    monthly = 1.1 ** (1 / 12) - 1
    for i in range(1, 13):
        step = float(expected_orders(model.bgnbd, 30.0 * i, one.x, one.t_x, one.T)) - float(
            expected_orders(model.bgnbd, 30.0 * (i - 1), one.x, one.t_x, one.T)
        )
        manual += spend * step / (1 + monthly) ** i
    assert got.predicted_clv == pytest.approx(manual, rel=1e-12)
    # the CLV of every percentile of the shop's customers at the fit, for rank conditions
    values = sorted(predict(model, i, 90.0, 12, 0.1).predicted_clv or 0.0 for i in inputs)
    assert (model.clv_months, model.annual_discount_rate) == (12, 0.1)
    assert len(model.clv_percentiles) == 99
    assert list(model.clv_percentiles) == sorted(model.clv_percentiles)
    top_fifth = model.clv_percentiles[79]
    assert sum(v >= top_fifth for v in values) == pytest.approx(300, abs=1)
    assert top_fifth == pytest.approx(float(np.percentile(values, 80)), rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(
    params.filter(lambda p: abs(p.a - 1) > 1e-3),
    histories(),
    st.floats(1.0, 10_000.0),
    st.floats(1.0, 3650.0),
)
def test_one_customers_predictions_equal_the_array_formulas(
    p: BgNbdParams, history: tuple[int, float, float], monetary: float, horizon: float
) -> None:
    x, t_x, T = history
    gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    model = prediction_model(
        p, shop_id="s", version="v", fitted_at=T0, customers=1, repeat_buyers=1,
        log_likelihood=0.0, gamma_gamma=gg,
    )  # fmt: skip
    got = predict(model, BgNbdInputs(x, t_x, T, monetary, T0), horizon, 12, 0.1)
    assert got.p_alive == pytest.approx(float(p_alive(p, x, t_x, T)), rel=1e-9, abs=1e-300)
    assert got.expected_orders == pytest.approx(
        float(expected_orders(p, horizon, x, t_x, T)), rel=1e-9, abs=1e-12
    )
    expected_clv = float(clv(p, gg, x, t_x, T, monetary, 12, monthly_rate(0.1)))
    assert got.predicted_clv == pytest.approx(expected_clv, rel=1e-9, abs=1e-9)


def test_clv_discounting() -> None:
    assert monthly_rate(0.0) == 0.0
    assert (1 + monthly_rate(0.1)) ** 12 == pytest.approx(1.1)
    gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    undiscounted = float(clv(CDNOW, gg, 2, 30.0, 39.0, 20.0, 12, 0.0))
    discounted = float(clv(CDNOW, gg, 2, 30.0, 39.0, 20.0, 12, 0.01))
    spend = float(expected_spend(gg, 2, 20.0))
    assert undiscounted == pytest.approx(
        spend * float(expected_orders(CDNOW, 360.0, 2, 30.0, 39.0))
    )
    assert 0 < discounted < undiscounted
    assert float(clv(CDNOW, gg, 2, 30.0, 39.0, 20.0, 0, 0.01)) == 0.0


def test_a_fit_whose_parameter_runs_off_to_zero_is_refused_with_the_reason() -> None:
    """Customers who buy in short bursts and then stop, 80 of them: the likelihood's optimum
    drives a parameter to 0 (its exponent underflows), refused as a FitError, not a crash."""
    rng = np.random.default_rng(5)
    states = []
    for i in range(80):
        start = float(rng.integers(0, 300)) - 800
        gap = float(rng.integers(3, 15))
        days = [start + k * gap for k in range(int(rng.integers(1, 9)))]
        state, _ = fold([placed(f"c{i}", f"c{i}-o{k}", day) for k, day in enumerate(days)])
        states.append(state)
    latest = max(s.as_of for s in states if s.as_of is not None)
    inputs = [i for s in states if (i := bgnbd_inputs(s, latest)) is not None]
    with pytest.raises(FitError, match="no interior optimum"):
        fit_shop("default", inputs, latest, 20)
