"""Wall-clock mode: a time-caused transition fires at the customer's due time, and not while
the customer's orders from before it are still waiting to be read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest

from config.rules import load_rules
from models.bgnbd import BgNbdParams
from streams.calibrations import read_calibrations
from streams.changelog import read_topic
from streams.cli.replay import publish
from streams.predictions import publish_models
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, settings_from, wait_for
from tests.factories import prediction_model

pytestmark = pytest.mark.integration
ADMIN_TOKEN = "test-admin-token-0123456789"
RULES = load_rules()
LEAD = timedelta(seconds=20)  # time for the worker to start and take the order


@pytest.fixture
def wall_worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {
        **isolated,
        "clock": "wall",
        "partitions": "2",
        "clock_interval_seconds": "0.5",
        "web_port": str(free_port()),
        "admin_token": ADMIN_TOKEN,
    }
    asyncio.run(ensure_topics(settings_from(overrides)))
    process = spawn_worker(overrides, tmp_path / "worker.log")
    yield overrides
    assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def test_a_single_order_customer_becomes_inactive_at_the_due_time(
    wall_worker: dict[str, str],
) -> None:
    settings = settings_from(wall_worker)
    due = datetime.now(UTC) + LEAD
    ordered_at = due - timedelta(days=RULES.inactivity.single_order_days)
    order = {
        "type": "order_placed",
        "order_id": "w-o1",
        "customer_id": "walt",
        "occurred_at": ordered_at.isoformat(),
        "currency": "EUR",
        "total": 2500,
    }
    await publish(settings, iter([(b"walt", orjson.dumps(order))]))

    async def transitions() -> list[dict]:  # type: ignore[type-arg]
        topic = settings.transitions_topic
        return [orjson.loads(r.value) async for r in read_topic(settings, topic)]

    found = await wait_for(
        transitions, lambda ts: len(ts) >= 2, LEAD.total_seconds() + 60, "2 transitions"
    )
    assert [(t["from_segment"], t["to_segment"], t["cause"]["kind"]) for t in found] == [
        (None, "new", "order_placed"),
        ("new", "inactive", "time"),
    ]
    became_inactive = found[1]
    assert datetime.fromisoformat(became_inactive["event_time"]) == due
    lateness = datetime.fromisoformat(became_inactive["emitted_at"]) - due
    assert timedelta(0) <= lateness < timedelta(seconds=5), lateness
    assert became_inactive["backfill"] is False

    # live transitions also go to the marketing topic of their type
    topic = settings.marketing_topic("customer.became_inactive")
    marketing = await wait_for(
        lambda: _read(settings, topic), lambda found: len(found) >= 1, 30, "the marketing topic"
    )
    assert [t["event_id"] for t in marketing] == [became_inactive["event_id"]]


async def _read(settings, topic: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [orjson.loads(r.value) async for r in read_topic(settings, topic)]


async def test_a_due_time_waits_for_the_orders_placed_before_it(
    wall_worker: dict[str, str],
) -> None:
    """A worker that has not read its input up to a customer's due time (here: fetching paused,
    as after a stop or behind a backlog) holds the customer's time-caused move: the order she
    placed before it, still waiting, keeps her from becoming inactive."""
    settings = settings_from(wall_worker)
    port = wall_worker["web_port"]
    due = datetime.now(UTC) + LEAD
    first = due - timedelta(days=RULES.inactivity.single_order_days)
    await publish(settings, iter([(b"vera", orjson.dumps(_order("v-o1", first)))]))
    await wait_for(
        lambda: _read(settings, settings.transitions_topic), lambda ts: len(ts) >= 1, 60, "new"
    )
    assert await _post(port, "/pause") == {"paused": True}
    second = datetime.now(UTC)
    assert second < due - timedelta(seconds=3), "the worker took too long to start"
    await publish(settings, iter([(b"vera", orjson.dumps(_order("v-o2", second)))]))

    # The due time passes (the worker reports the customer overdue: held, not fired) ...
    await wait_for(lambda: _overdue(port), lambda n: n == 1, LEAD.total_seconds() + 30, "overdue")
    held = await _moves(settings)
    assert [(t["from_segment"], t["to_segment"]) for t in held] == [(None, "new")]

    # ... and once the order is read she moves on it, never through inactive.
    assert await _post(port, "/resume") == {"paused": False}
    found = await wait_for(
        lambda: _moves(settings), lambda ts: len(ts) >= 2, 60, "the move on the second order"
    )
    assert [(t["from_segment"], t["cause"]["kind"]) for t in found] == [
        (None, "order_placed"),
        ("new", "order_placed"),
    ]
    assert found[1]["to_segment"] != "inactive"
    await wait_for(lambda: _overdue(port), lambda n: n == 0, 30, "nothing overdue")


async def _moves(settings) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The segment moves on the transitions topic (not the tags)."""
    return [t for t in await _read(settings, settings.transitions_topic) if "to_segment" in t]


def _order(order_id: str, at: datetime, customer: str = "vera") -> dict:  # type: ignore[type-arg]
    return {
        "type": "order_placed",
        "order_id": order_id,
        "customer_id": customer,
        "occurred_at": at.isoformat(),
        "currency": "EUR",
        "total": 2500,
    }


async def _post(port: str, path: str) -> object:
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as response:
        return orjson.loads(await response.read())


async def _overdue(port: str) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("segmenter_overdue_customers")
    )


async def test_the_leader_recalibrates_on_schedule(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """With quantile scoring, the leader computes and publishes calibrations every
    SEGMENTER_RECALIBRATION_INTERVAL_HOURS, judged by the newest calibration on the topic: the
    first one at once, the next one an interval later."""
    interval_hours = 0.003  # about 11 s
    overrides = {
        **isolated,
        "clock": "wall",
        "recalibration_interval_hours": str(interval_hours),
        "clock_interval_seconds": "0.5",
    }
    settings = settings_from(overrides)
    await ensure_topics(settings)
    now = datetime.now(UTC)
    customers = RULES.scoring.min_customers + 5
    await publish(
        settings,
        iter(
            (f"k{i}".encode(), orjson.dumps(_order(f"k{i}-o1", now - timedelta(days=i), f"k{i}")))
            for i in range(customers)
        ),
    )
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        first = await wait_for(
            lambda: read_calibrations(settings), lambda c: "default" in c, 90, "a calibration"
        )
        calibration = first["default"]
        assert (calibration.method, calibration.customers) == ("quantile", customers)
        second = await wait_for(
            lambda: read_calibrations(settings),
            lambda c: c["default"].version != calibration.version,
            interval_hours * 3600 + 60,
            "the next calibration",
        )
        gap = second["default"].computed_at - calibration.computed_at  # type: ignore[operator]
        assert gap >= timedelta(hours=interval_hours)
    finally:
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def test_a_repeat_buyer_becomes_likely_churned_at_the_crossing_by_the_wall_clock(
    wall_worker: dict[str, str],
) -> None:
    """A shop's prediction model under which a repeat buyer's P(alive) reaches the churn
    threshold LEAD from now (its parameter b solved for that instant): the worker emits
    `became_likely_churned` stamped with that instant, at the clock tick after it."""
    settings = settings_from(wall_worker)
    now = datetime.now(UTC)
    first_day = (now - timedelta(days=30)).date()
    origin = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    target = now + LEAD
    r, alpha, a, t_x, threshold = 1.0, 10.0, 1.0, 10.0, RULES.predictions.churn_threshold
    T = (target - origin) / timedelta(days=1)
    # 1 / (1 + a/b ((alpha+T)/(alpha+t_x))^(r+1)) = threshold, solved for b (x = 1)
    b = a * ((alpha + T) / (alpha + t_x)) ** (r + 1) * threshold / (1 - threshold)
    model = prediction_model(
        BgNbdParams(r=r, alpha=alpha, a=a, b=b), version="p-wall", fitted_at=now
    )
    await publish_models(settings, [model])
    orders = [
        {
            "type": "order_placed",
            "order_id": f"cw-o{k}",
            "customer_id": "chloe",
            "occurred_at": (origin + timedelta(days=day, hours=12)).isoformat(),
            "currency": "EUR",
            "total": 2500,
        }
        for k, day in enumerate((0, t_x))
    ]
    await publish(settings, iter((b"chloe", orjson.dumps(o)) for o in orders))

    async def churn() -> list[dict]:  # type: ignore[type-arg]
        topic = settings.transitions_topic
        found = [orjson.loads(r.value) async for r in read_topic(settings, topic)]
        return [t for t in found if t["type"] == "churn_risk_changed"]

    moves = await wait_for(churn, bool, LEAD.total_seconds() + 60, "the churn-risk move")
    assert [(t["move"], t["cause"]["kind"], t["model_version"]) for t in moves] == [
        ("became_likely_churned", "time", "p-wall")
    ]
    when = datetime.fromisoformat(moves[0]["event_time"])
    assert timedelta(0) <= when - target <= timedelta(microseconds=1)  # up to the microsecond
    lateness = datetime.fromisoformat(moves[0]["emitted_at"]) - when
    assert timedelta(0) <= lateness < timedelta(seconds=5), lateness
    assert moves[0]["p_alive"] == pytest.approx(threshold, abs=1e-6)
    print(f"churn-risk move emitted {lateness.total_seconds():.3f} s after the crossing")
