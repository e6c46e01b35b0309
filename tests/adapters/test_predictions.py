"""Fitting prediction models from states (event-loop turns, refusals), the schedule, adoption by
a worker, and the model's encoding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np

from models.bgnbd import BgNbdParams
from models.predictions import PredictionModel, bgnbd_inputs, fit_shop, predict
from streams.calibrations import YIELD_EVERY
from streams.codecs import decode_prediction_model, encode_prediction_model
from streams.predictions import ShopPredictions, collect_inputs, fit_due, fit_models
from tests.factories import at, placed
from tests.unit.core import fold

DAY = timedelta(days=1)
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _states(customers: int, shop: str = "default", seed: int = 1):  # type: ignore[no-untyped-def]
    """Customers who order at their own pace from a random day of a year and drop out after
    any order with probability 0.5 (the story BG/NBD tells), at most 6 orders."""
    rng = np.random.default_rng(seed)
    states = []
    for i in range(customers):
        day, days = float(rng.integers(0, 200)), []
        pace = float(rng.gamma(1.0, 30.0))  # mean days between orders
        while day < 365 and len(days) < 6:
            days.append(day)
            if rng.random() < 0.5:
                break
            day += float(np.ceil(rng.exponential(pace)))
        events = [
            placed(f"c{i}", f"c{i}-o{k}", float(day), total=1000 + 10 * i, shop=shop)
            for k, day in enumerate(days)
        ]
        state, _ = fold(events)
        states.append(state)
    return states


def _model(shop: str, fitted_at: datetime) -> PredictionModel:
    return PredictionModel.model_validate(
        {
            "shop_id": shop,
            "version": f"p{fitted_at:%Y%m%dT%H%M%SZ}",
            "fitted_at": fitted_at,
            "customers": 100,
            "repeat_buyers": 40,
            "bgnbd": {"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.4},
            "log_likelihood": -4.0,
            "gamma_gamma": {"p": 6.2, "q": 3.7, "v": 15.4},
        }
    )


async def test_a_fit_per_shop_and_a_reason_for_every_shop_without_one() -> None:
    states = _states(120) + _states(5, shop="tiny")
    inputs = await collect_inputs(states, lambda _shop: at(400))
    assert sorted(inputs) == ["default", "tiny"]
    assert len(inputs["default"]) == 120
    assert inputs["default"][0] == bgnbd_inputs(states[0], at(400))
    report = await fit_models(inputs, lambda _shop: at(400), min_repeat_buyers=30)
    assert [m.shop_id for m in report.published] == ["default"]
    expected = fit_shop("default", inputs["default"], at(400), 30)
    assert report.published[0].bgnbd == expected.bgnbd
    assert report.published[0].customers == 120
    repeat = sum(1 for i in inputs["tiny"] if i.x)
    assert report.refused == {
        "tiny": f"shop 'tiny' has {repeat} repeat buyers of 5 customers, fewer than 30: "
        "no prediction model"
    }


async def test_collecting_inputs_gives_the_event_loop_turns_and_filters_a_shop() -> None:
    states = [fold([placed(f"c{i}", "o1", i % 50)])[0] for i in range(3 * YIELD_EVERY)]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    start = turns
    inputs = await collect_inputs(states, lambda _shop: at(60))
    counter.cancel()
    assert turns - start >= 3
    assert len(inputs["default"]) == 3 * YIELD_EVERY
    assert await collect_inputs(states, lambda _shop: at(60), shop="other") == {}


async def test_an_order_stamped_after_the_instant_is_summarised_at_its_own_time() -> None:
    state, _ = fold([placed("c", "o1", 0), placed("c", "o2", 10)])
    inputs = await collect_inputs([state], lambda _shop: at(5))
    assert inputs["default"] == [bgnbd_inputs(state, at(10))]


def test_a_fit_is_due_an_interval_after_the_oldest_model_or_the_last_attempt() -> None:
    assert fit_due([], None, NOW, DAY)
    assert not fit_due([_model("a", NOW - DAY / 2)], None, NOW, DAY)
    assert fit_due([_model("a", NOW - DAY / 2), _model("b", NOW - 2 * DAY)], None, NOW, DAY)
    assert not fit_due([_model("b", NOW - 2 * DAY)], NOW - DAY / 4, NOW, DAY)
    assert fit_due([], NOW - DAY, NOW, DAY)


def test_a_worker_adopts_only_newer_models() -> None:
    predictions = ShopPredictions()
    first = _model("a", NOW)
    assert predictions.adopt(first)
    assert not predictions.adopt(first)  # a replay of the compacted topic
    assert not predictions.adopt(_model("a", NOW - DAY))
    newer = _model("a", NOW + DAY)
    assert predictions.adopt(newer)
    assert predictions.model_for("a") == newer
    assert predictions.model_for("b") is None


def test_a_model_survives_its_encoding() -> None:
    model = _model("a", NOW)
    assert decode_prediction_model(encode_prediction_model(model)) == model


def test_the_redis_fields_are_the_predictions_at_the_states_instant() -> None:
    state, _ = fold([placed("c", "o1", 0, total=2000), placed("c", "o2", 20, total=3000)])
    assert state.as_of is not None
    empty = ShopPredictions()
    assert empty.fields(state) == [
        "p_alive", "", "expected_orders_90d", "", "predicted_clv", "", "prediction_model", "",
    ]  # fmt: skip
    model = _model("default", NOW)
    predictions = ShopPredictions({"default": model}, 90.0, 12, 0.1)
    inputs = bgnbd_inputs(state, state.as_of)
    assert inputs is not None
    expected = predict(model, inputs, 90.0, 12, 0.1)
    assert expected.predicted_clv is not None
    assert predictions.fields(state) == [
        "p_alive", f"{expected.p_alive:.6f}",
        "expected_orders_90d", f"{expected.expected_orders:.4f}",
        "predicted_clv", f"{expected.predicted_clv:.0f}",
        "prediction_model", model.version,
    ]  # fmt: skip
    # another shop's customer has no model
    other, _ = fold([placed("d", "o1", 0, shop="other"), placed("d", "o2", 3, shop="other")])
    assert predictions.fields(other)[1::2] == ["", "", "", ""]
    # a model at the edge of what the formulas compute: empty, never "nan" or "inf"
    edge = model.model_copy(
        update={"bgnbd": BgNbdParams(r=1.156e4, alpha=8.185e4, a=1.368e-6, b=396.9)}
    )
    shown = ShopPredictions({"default": edge}, 90.0, 12, 0.1).fields(state)
    assert "nan" not in shown and "inf" not in shown and "-inf" not in shown
    assert shown[-1] == edge.version
