"""Prediction models on the real broker: `segmenter predict fit` over the changelog, published to
the compacted topic, refused shops named; the leader's scheduled fit, adopted by the worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config.rules import load_rules
from models.churn import crossing
from models.predictions import bgnbd_inputs, fit_shop
from models.state import CustomerState
from streams.changelog import read_latest, read_table, read_topic
from streams.cli import demo
from streams.cli.replay import publish
from streams.cli.sample_data import sample_events, sample_records
from streams.clients import kafka_options
from streams.codecs import decode_header, encode_stored
from streams.predictions import ShopPredictions, read_models
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import cli_result, free_port, settings_from, wait_for
from tests.factories import at, burst_days, first_day, placed
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
    assert result.returncode == 3, result.stderr  # nothing published: a script can tell
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
    sample = list(sample_events(40))
    customers = {e["customer_id"] for e in sample}
    newest = max(datetime.fromisoformat(e["occurred_at"]) for e in sample)
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        await wait_for(  # every customer, up to the sample's last record
            lambda: read_table(settings),
            lambda t: (
                {k.split("/", 1)[1] for k in t} >= customers
                and max(s.state.as_of or newest - DAY for s in t.values()) >= newest
            ),
            120,
            "the sample's customers",
        )
        with demo.console.capture() as captured:
            await demo._predict(settings)
        text = captured.get()
    finally:
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    model = (await read_models(settings))["default"]
    assert f"model {model.version} of shop default" in text
    assert "p_alive" in text
    # the refit's churn-risk moves, each at its customer's crossing instant
    table = await read_table(settings)
    threshold = load_rules().predictions.churn_threshold_for("default")
    churned = sorted(
        (instant.date().isoformat(), s.state.customer_id)
        for s in table.values()
        if (instant := crossing(s.state, model, threshold)) is not None
        and s.state.as_of is not None
        and instant <= s.state.as_of
    )
    assert churned
    for day, customer in churned:
        assert any(
            line.startswith(f"{day} {customer} ") and "became_likely_churned" in line
            for line in text.splitlines()
        ), (day, customer, text)
    print(text)


async def test_became_likely_churned_is_emitted_at_the_crossing_instant_in_event_time(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """Streaming equals batch for churn risk: replay a generated history in event-time mode,
    refit, then let event time pass: each customer's `became_likely_churned` carries the
    instant P(alive) reaches the threshold, solved here from the BG/NBD formula; the next
    order moves the customer back."""
    overrides = {**isolated, "prediction_min_repeat_buyers": "20"}
    settings = settings_from(overrides)
    await ensure_topics(settings)
    rng = np.random.default_rng(5)
    events = []
    first: dict[str, datetime] = {}  # 00:00 UTC of each customer's first order day
    for i in range(CUSTOMERS):
        days = burst_days(rng)
        first[f"c{i}"] = first_day(days[0])
        events += [
            placed(f"c{i}", f"c{i}-o{k}", day, total=1500 + 10 * i) for k, day in enumerate(days)
        ]
    events.sort(key=lambda e: e["occurred_at"])
    await publish(settings, iter((e["customer_id"].encode(), orjson.dumps(e)) for e in events))
    cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:

        async def hashes() -> dict[str, dict[str, str]]:
            return {
                f"c{i}": await cache.read_customer("default", f"c{i}") for i in range(CUSTOMERS)
            }

        await wait_for(hashes, lambda h: all(h.values()), 120, "every customer in redis")
        newest = max(datetime.fromisoformat(e["occurred_at"]) for e in events)
        before = await wait_for(
            lambda: read_table(settings),
            lambda t: max(s.state.as_of or newest - DAY for s in t.values()) == newest,
            60,
            "the whole history",
        )
        result = cli_result(overrides, "predict", "fit")
        assert result.returncode == 0, result.stderr
        model = (await read_models(settings))["default"]
        await wait_for(
            hashes,
            lambda h: all(f.get("prediction_model") == model.version for f in h.values()),
            60,
            "the refit's re-evaluation",
        )
        table = await read_table(settings)
        threshold = load_rules().predictions.churn_threshold_for("default")
        bg = model.bgnbd
        expected, refitted = {}, {}
        latest = max(s.state.as_of for s in table.values() if s.state.as_of is not None)
        # orders may not lie in the future: event time passes up to yesterday at most
        bound = datetime.now(UTC) - timedelta(days=1)
        for i in range(CUSTOMERS):
            state = table[f"default/c{i}"].state
            inputs = bgnbd_inputs(state, latest)
            assert inputs is not None
            if inputs.x == 0:
                continue  # a one-time buyer: P(alive) stays 1
            # 1 / (1 + a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)) = p, solved for T
            odds = (1 - threshold) / threshold * (bg.b + inputs.x - 1) / bg.a
            T = (bg.alpha + inputs.t_x) * odds ** (1 / (bg.r + inputs.x)) - bg.alpha
            instant = first[f"c{i}"] + timedelta(days=max(T, inputs.t_x))
            if instant <= latest:  # stamped as of the instant the refit judged them at
                as_of = before[f"default/c{i}"].state.as_of
                assert as_of is not None
                refitted[f"c{i}"] = max(instant, as_of)
            elif instant < bound - timedelta(days=2):
                expected[f"c{i}"] = instant
        assert expected, f"no customer crosses after the history: {latest} {refitted}"
        # Already at risk when the model came: the refit's move, at the crossing instant if
        # event time passed it since the customer's latest instant (the re-evaluation catches
        # up with the partition's event time), else at that latest instant.
        moves = await _churn_moves(settings)
        got = {c: (e["cause"]["kind"], e["event_time"]) for c, _, e in moves}
        assert set(got) == set(refitted)
        for customer, (kind, when) in got.items():
            assert kind == "model_refit"
            assert abs(datetime.fromisoformat(when) - refitted[customer]) <= timedelta(
                microseconds=1
            ), customer
        assert any(refitted[c] > before[f"default/{c}"].state.as_of for c in refitted)  # type: ignore[operator]
        # Event time passes: one order of a new customer, after those crossings.
        day = (max(expected.values()) - at(0)) / timedelta(days=1) + 1
        await publish(settings, iter([(b"later", orjson.dumps(placed("later", "l1", day)))]))
        moves = await wait_for(
            lambda: _churn_moves(settings),
            lambda m: {c for c, mv, _ in m if mv == "became_likely_churned"} >= set(expected),
            60,
            "the crossings",
        )
        for customer, move, event in moves:
            if customer in expected and move == "became_likely_churned":
                assert event["cause"]["kind"] == "time"
                when = datetime.fromisoformat(event["event_time"])
                assert abs(when - expected[customer]) <= timedelta(microseconds=1), customer
        # The next order of one of them moves them back.
        back = sorted(expected)[0]
        order = placed(back, f"{back}-back", day + 1)
        await publish(settings, iter([(back.encode(), orjson.dumps(order))]))
        await wait_for(
            lambda: _churn_moves(settings),
            lambda m: (back, "no_longer_likely_churned", True) in {(c, mv, True) for c, mv, _ in m},
            60,
            "the move back",
        )
    finally:
        await cache.close()
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]


CUSTOMERS = 80
DAY = timedelta(days=1)


async def _churn_moves(settings: Any) -> list[tuple[str, str, dict[str, Any]]]:
    moves = []
    async for record in read_topic(settings, settings.transitions_topic):
        if record.value is None:
            continue
        event = orjson.loads(record.value)
        if event["type"] == "churn_risk_changed":
            moves.append((event["customer_id"], event["move"], event))
    return moves


async def test_a_model_published_while_no_worker_ran_is_applied_as_a_refit_at_start_up(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """The churn verdict is stored with the model it was judged under: a worker that starts
    under a newer model (published while it was stopped, or adopted but not yet applied when it
    stopped) re-evaluates the customers judged under the older one, and reports their moves
    with cause `model_refit`, as a running worker would have."""
    overrides = {**isolated, "prediction_min_repeat_buyers": "20"}
    settings = settings_from(overrides)
    await ensure_topics(settings)
    rng = np.random.default_rng(9)
    events = []
    for i in range(CUSTOMERS):
        days = burst_days(rng)
        events += [
            placed(f"c{i}", f"c{i}-o{k}", day, total=1500 + 10 * i) for k, day in enumerate(days)
        ]
    events.sort(key=lambda e: e["occurred_at"])
    await publish(settings, iter((e["customer_id"].encode(), orjson.dumps(e)) for e in events))
    newest = max(datetime.fromisoformat(e["occurred_at"]) for e in events)
    log = tmp_path / "worker.log"
    process = spawn_worker(overrides, log)
    try:
        before = await wait_for(
            lambda: read_table(settings),
            lambda t: (
                len(t) == CUSTOMERS
                and max(s.state.as_of or newest - DAY for s in t.values()) == newest
            ),
            120,
            "the whole history",
        )
    finally:
        assert stop_worker(process) == 0, log.read_text()[-3000:]
    result = cli_result(overrides, "predict", "fit")  # no worker runs
    assert result.returncode == 0, result.stderr
    model = (await read_models(settings))["default"]
    threshold = load_rules().predictions.churn_threshold_for("default")
    # At risk at their latest instant under the new model: the refit's move, stamped with that
    # instant (a worker that has just started knows no partition's event time yet: crossings
    # after it wait in the due index for event time to pass them, as any crossing does).
    expected = {}
    for stored in before.values():
        state = stored.state
        instant = crossing(state, model, threshold)
        assert state.as_of is not None
        if instant is not None and instant <= state.as_of:
            expected[state.customer_id] = state.as_of
    assert expected and len(expected) < CUSTOMERS
    assert await _churn_moves(settings) == []
    process = spawn_worker(overrides, tmp_path / "again.log")
    try:
        moves = await wait_for(
            lambda: _churn_moves(settings),
            lambda m: len(m) >= len(expected),
            90,
            "the refit's moves at start-up",
        )
        assert {c for c, _, _ in moves} == set(expected)
        for customer, move, event in moves:
            assert (move, event["cause"]["kind"]) == ("became_likely_churned", "model_refit")
            when = datetime.fromisoformat(event["event_time"])
            assert abs(when - expected[customer]) <= timedelta(microseconds=1), customer
        # every customer is stored with the verdict under the new model: not stale any more
        judged = await wait_for(
            lambda: _verdicts(settings),
            lambda v: len(v) == CUSTOMERS and {m for m, _ in v.values()} == {model.version},
            60,
            "the verdicts stored",
        )
        assert {c for c, (_, churned) in judged.items() if churned} == set(expected)
    finally:
        assert stop_worker(process) == 0, (tmp_path / "again.log").read_text()[-3000:]


async def _verdicts(settings: Any) -> dict[str, tuple[str, bool]]:
    found = {}
    for key, value in (await read_latest(settings)).items():
        header = decode_header(value)
        if header is not None and header.judged is not None:
            found[key.decode().split("/", 1)[1]] = tuple(header.judged)
    return found  # type: ignore[return-value]
