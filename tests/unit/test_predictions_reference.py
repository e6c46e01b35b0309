"""The prediction models against the published reference: the CDNOW sample of Fader, Hardie and
Lee (2005; 2,357 customers, 39-week calibration period, weeks as unit) as the ``lifetimes``
package (0.11.3, a test-only dependency) ships it, its published BG/NBD estimates, and
lifetimes' own per-customer values, Gamma-Gamma fit and CLV."""

from __future__ import annotations

from datetime import UTC, datetime

import lifetimes
import numpy as np
import pandas as pd
import pytest
from lifetimes import datasets

from models.bgnbd import BgNbdParams, expected_orders, fit_bgnbd, p_alive
from models.predictions import BgNbdInputs, PredictionModel, predict
from models.spend import GammaGammaParams, clv, expected_spend, fit_gamma_gamma
from tests.factories import prediction_model

# Fader, Hardie and Lee (2005), "Counting your customers the easy way", section 5.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


@pytest.fixture(scope="module")
def cdnow():  # type: ignore[no-untyped-def]
    data = datasets.load_cdnow_summary_data_with_monetary_value()
    assert len(data) == 2357
    return (
        data["frequency"].to_numpy(dtype=float),
        data["recency"].to_numpy(dtype=float),
        data["T"].to_numpy(dtype=float),
        data["monetary_value"].to_numpy(dtype=float),
    )


@pytest.fixture(scope="module")
def reference(cdnow):  # type: ignore[no-untyped-def]
    x, t_x, T, _ = cdnow
    fitter = lifetimes.BetaGeoFitter(penalizer_coef=0.0)
    fitter.fit(x, t_x, T)
    return fitter


def test_the_fit_reproduces_the_published_estimates(cdnow) -> None:  # type: ignore[no-untyped-def]
    x, t_x, T, _ = cdnow
    fitted = fit_bgnbd(x, t_x, T).params
    for name, value in PUBLISHED.items():
        assert getattr(fitted, name) == pytest.approx(value, rel=0.01), name


def test_per_customer_values_equal_lifetimes(cdnow, reference) -> None:  # type: ignore[no-untyped-def]
    x, t_x, T, _ = cdnow
    params = BgNbdParams(**{k: float(v) for k, v in reference.params_.items()})
    np.testing.assert_allclose(
        p_alive(params, x, t_x, T),
        reference.conditional_probability_alive(x, t_x, T),
        rtol=0,
        atol=1e-6,
    )
    for horizon in (1.0, 10.0, 39.0, 52.0, 104.0):
        np.testing.assert_allclose(
            expected_orders(params, horizon, x, t_x, T),
            reference.conditional_expected_number_of_purchases_up_to_time(horizon, x, t_x, T),
            rtol=1e-6,
            atol=1e-6,
        )


def test_gamma_gamma_and_clv_equal_lifetimes(cdnow, reference) -> None:  # type: ignore[no-untyped-def]
    x, t_x, T, monetary = cdnow
    repeat = x > 0
    spend_fitter = lifetimes.GammaGammaFitter(penalizer_coef=0.0)
    spend_fitter.fit(x[repeat], monetary[repeat])
    ours = fit_gamma_gamma(x[repeat], monetary[repeat])
    for name in ("p", "q", "v"):
        assert getattr(ours, name) == pytest.approx(float(spend_fitter.params_[name]), rel=0.01)
    np.testing.assert_allclose(
        expected_spend(ours, x, monetary),
        spend_fitter.conditional_expected_average_profit(x, monetary),
        rtol=0.01,
    )
    # CLV over 12 months at 1 % a month; lifetimes' month is 4.345 weeks. Each side with its own
    # fitted parameters: equal within 1 %.
    params = fit_bgnbd(x, t_x, T).params
    series = [pd.Series(column) for column in (x, t_x, T, monetary)]
    expected = spend_fitter.customer_lifetime_value(
        reference, *series, time=12, discount_rate=0.01, freq="W"
    ).to_numpy()
    got = clv(params, ours, x, t_x, T, monetary, 12, 0.01, month=4.345)
    np.testing.assert_allclose(got, expected, rtol=0.01)
    # With the same parameters, the same values to rounding.
    same = GammaGammaParams(**{k: float(v) for k, v in spend_fitter.params_.items()})
    bg = BgNbdParams(**{k: float(v) for k, v in reference.params_.items()})
    np.testing.assert_allclose(
        clv(bg, same, x, t_x, T, monetary, 12, 0.01, month=4.345), expected, rtol=1e-9
    )


def test_expected_orders_stay_finite_when_a_and_b_are_large() -> None:
    """A shop whose customers all drop out at about the same rate fits large a and b (these
    are such a fit): the transformed 2F1 overflows there, the value must not."""
    params = BgNbdParams(r=2.1681, alpha=19.380, a=723.73, b=2393.2)
    fitter = lifetimes.BetaGeoFitter()
    fitter.params_ = pd.Series(params.model_dump())
    for x, t_x, T, t in ((5, 50.0, 75.5, 30.0), (2, 24.0, 80.5, 360.0), (50, 700.0, 720.0, 90.0)):
        ours = float(expected_orders(params, t, x, t_x, T))
        theirs = fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        assert ours == pytest.approx(theirs, rel=1e-9)
        inputs = BgNbdInputs(x, t_x, T, 0.0, datetime(2026, 1, 1, tzinfo=UTC))
        one = predict(_model(params), inputs, t, 0, 0.1)  # the per-customer path
        assert one.expected_orders == pytest.approx(theirs, rel=1e-9)
    xs = np.arange(0, 60, dtype=float)
    values = expected_orders(params, 360.0, xs, xs * 10.0, xs * 10.0 + 30.0)
    assert np.isfinite(values).all() and (values >= 0).all()


def _model(params: BgNbdParams) -> PredictionModel:
    return prediction_model(params, shop_id="s", customers=1, repeat_buyers=1, log_likelihood=0.0)
