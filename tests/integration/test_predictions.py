"""Prediction models on the real broker: `segmenter predict fit` over the changelog, published to
the compacted topic, refused shops named; the leader's scheduled fit, adopted by the worker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from models.predictions import bgnbd_inputs, fit_shop
from models.state import CustomerState
from streams.changelog import read_table
from streams.cli import demo
from streams.cli.replay import publish
from streams.cli.sample_data import sample_events, sample_records
from streams.clients import kafka_options
from streams.codecs import encode_stored
from streams.predictions import ShopPredictions, read_models
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import cli_result, free_port, settings_from, wait_for
from tests.factories import placed
from tests.unit.core import fold

pytestmark = pytest.mark.integration


def _states(customers: int, shop: str, seed: int) -> list[CustomerState]:
    rng = np.random.default_rng(seed)
    states = []
    for i in range(customers):
        days = sorted(rng.choice(365, size=int(rng.integers(1, 7)), replace=False))
        events = [
            placed(f"c{i}", f"c{i}-o{k}", float(day), total=1000 + 37 * i, shop=shop)
            for k, day in enumerate(days)
        ]
        state, _ = fold(events)
        states.append(state)
    return states


async def _write_changelog(overrides: dict[str, str], states: list[CustomerState]) -> None:
    settings = settings_from(overrides)
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(settings.changelog_topic, 1, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka_options(settings))
    await producer.start()
    try:
        for state in states:
            await producer.send(
                settings.changelog_topic, key=state.key.encode(), value=encode_stored(0, state)
            )
        await producer.flush()
    finally:
        await producer.stop()


async def test_predict_fit_publishes_per_shop_and_names_the_shops_without_a_model(
    isolated: dict[str, str],
) -> None:
    web = _states(150, "web", seed=11)
    tiny = _states(4, "tiny", seed=12)
    await _write_changelog(isolated, web + tiny)
    result = cli_result(isolated, "predict", "fit")
    assert result.returncode == 0, result.stderr
    errors = " ".join(result.stderr.split())
    tiny_repeat = sum(1 for s in tiny if len({o.placed_at for o in s.counted_orders()}) > 1)
    assert (
        f"no model: shop 'tiny' has {tiny_repeat} repeat buyers of 4 customers, fewer than 30"
        in errors
    )
    models = await read_models(settings_from(isolated))
    assert sorted(models) == ["web"]
    model = models["web"]
    assert model.customers == 150
    assert model.gamma_gamma is not None
    assert model.version in result.stdout
    # event clock: the shop's instant is the newest any of its states reflects
    instant = max(s.as_of for s in web if s.as_of is not None)
    inputs = [i for s in web if (i := bgnbd_inputs(s, instant)) is not None]
    assert model.bgnbd == fit_shop("web", inputs, instant, 30).bgnbd
    shown = cli_result(isolated, "predict", "show")
    assert shown.returncode == 0, shown.stderr
    assert model.version in shown.stdout


async def test_predict_fit_of_an_unknown_shop_says_so(isolated: dict[str, str]) -> None:
    result = cli_result(isolated, "predict", "fit", "--shop", "nowhere")
    assert result.returncode == 0, result.stderr
    errors = " ".join(result.stderr.split())
    assert "no model: shop 'nowhere' has no customer with a counted order" in errors
    assert "nothing published" in errors


async def test_the_leader_fits_on_schedule_and_the_worker_adopts_the_model(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    overrides = {
        **isolated,
        "clock": "wall",
        "prediction_fit_interval_hours": "0.002",  # about 7 s
        "web_port": str(free_port()),
    }
    await _write_changelog(overrides, _states(100, "web", seed=13))
    settings = settings_from(overrides)
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        models = await wait_for(
            lambda: read_models(settings), lambda m: "web" in m, 120, "a scheduled fit"
        )
        first = models["web"]
        assert first.customers == 100
        assert (datetime.now(UTC) - first.fitted_at).total_seconds() < 120

        async def adopted() -> dict[str, str]:
            url = f"http://127.0.0.1:{overrides['web_port']}/stats"
            try:
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    stats = await response.json()
            except aiohttp.ClientError:
                return {}
            versions: dict[str, str] = stats["prediction_models"]
            return versions

        await wait_for(adopted, lambda v: v.get("web") == first.version, 60, "adoption")
        later = await wait_for(
            lambda: read_models(settings),
            lambda m: m["web"].version != first.version,
            90,
            "the next scheduled fit",
        )
        assert (later["web"].fitted_at - first.fitted_at).total_seconds() >= 0.002 * 3600
    finally:
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def test_the_worker_writes_each_customers_predictions_to_redis(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """Streamed equals batch: once the shop's model is adopted, every customer's Redis hash
    holds the predictions of the formulas for their (x, t_x, T) at their latest instant; a
    customer's next order writes them again; `segmenter customer --json` shows them."""
    overrides = {**isolated, "prediction_min_repeat_buyers": "20"}
    settings = settings_from(overrides)
    await ensure_topics(settings)
    rng = np.random.default_rng(21)
    events = []
    for i in range(60):
        days = sorted(rng.choice(300, size=int(rng.integers(1, 6)), replace=False))
        events += [
            placed(f"c{i}", f"c{i}-o{k}", float(day), total=1500 + 10 * i)
            for k, day in enumerate(days)
        ]
    events.sort(key=lambda e: e["occurred_at"])
    await publish(settings, iter((e["customer_id"].encode(), orjson.dumps(e)) for e in events))
    cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:

        async def hashes() -> dict[str, dict[str, str]]:
            return {f"c{i}": await cache.read_customer("default", f"c{i}") for i in range(60)}

        await wait_for(hashes, lambda h: all(h.values()), 120, "every customer in redis")
        result = cli_result(overrides, "predict", "fit")
        assert result.returncode == 0, result.stderr
        model = (await read_models(settings))["default"]
        written = await wait_for(
            hashes,
            lambda h: all(f.get("prediction_model") == model.version for f in h.values()),
            60,
            "the predictions in redis",
        )
        table = await read_table(settings)
        predictions = ShopPredictions.from_settings(settings, {"default": model})
        for customer, fields in written.items():
            state = table[f"default/{customer}"].state
            assert state.as_of is not None
            expected = predictions.predictions(state, state.as_of)
            assert expected is not None
            assert float(fields["p_alive"]) == pytest.approx(expected.p_alive, abs=1e-6)
            assert float(fields["expected_orders_90d"]) == pytest.approx(
                expected.expected_orders, abs=1e-4
            )
            assert expected.predicted_clv is not None
            assert float(fields["predicted_clv"]) == pytest.approx(expected.predicted_clv, abs=0.5)
        # a new order writes the customer's predictions again, at the new instant
        order = placed("c0", "c0-new", 320.0, total=2000)
        await publish(settings, iter([(b"c0", orjson.dumps(order))]))
        after = await wait_for(
            lambda: cache.read_customer("default", "c0"),
            lambda f: f.get("last_order_at", "").startswith("2025-11-17"),
            60,
            "the new order",
        )
        state = (await read_table(settings))["default/c0"].state
        assert state.as_of is not None
        again = predictions.predictions(state, state.as_of)
        assert again is not None
        assert float(after["p_alive"]) == pytest.approx(again.p_alive, abs=1e-6)
        shown = cli_result(overrides, "customer", "c0", "--json")
        assert shown.returncode == 0, shown.stderr
        body = orjson.loads(shown.stdout)
        assert body["predictions"]["model_version"] == model.version
        assert body["predictions"]["p_alive"] == pytest.approx(again.p_alive, rel=1e-12)
    finally:
        await cache.close()
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def test_the_demo_fits_a_model_and_shows_predictions(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    overrides = {**isolated, "prediction_min_repeat_buyers": "10"}
    settings = settings_from(overrides)
    await ensure_topics(settings)
    records = list(sample_records(40))
    await publish(settings, iter(records))
    customers = {e["customer_id"] for e in sample_events(40)}
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        await wait_for(
            lambda: read_table(settings),
            lambda t: {k.split("/", 1)[1] for k in t} >= customers,
            120,
            "the sample's customers",
        )
        await asyncio.sleep(3)  # the rest of the year's records
        with demo.console.capture() as captured:
            await demo._predict(settings)
        text = captured.get()
    finally:
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    model = (await read_models(settings))["default"]
    assert f"model {model.version} of shop default" in text
    assert "p_alive" in text
    print(text)
