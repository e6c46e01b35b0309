"""A segment on predictions on the real broker (config/segments-predictive.yaml): after a refit,
the customers in `high_value_at_risk` are those whose P(alive) and CLV, from the formulas, meet
its bounds; as event time passes, each customer moves in at the instant P(alive) reaches 0.5 and
out at the instant the CLV falls below the shop's top fifth, both solved in this test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from models.bgnbd import p_alive
from models.predictions import PredictionModel, bgnbd_inputs, predict
from models.state import CustomerState
from streams.changelog import read_table, read_topic
from streams.cli.replay import publish
from streams.predictions import read_models
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import cli_result, settings_from, wait_for
from tests.factories import at, burst_days, first_day, placed

pytestmark = pytest.mark.integration

RULES = Path(__file__).parents[2] / "config" / "segments-predictive.yaml"
SEGMENT = "high_value_at_risk"
CUSTOMERS = 80
MICRO = timedelta(microseconds=1)


def _rules_without_dwell(tmp_path: Path) -> Path:
    """The predictive rule file with no minimum dwell: every move at its own instant."""
    rules = yaml.safe_load(RULES.read_text())
    rules["scoring"]["min_dwell_days"] = 0
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def _alive_crossing(model: PredictionModel, state: CustomerState, origin: datetime) -> datetime:
    """The instant P(alive) reaches 0.5: the BG/NBD formula solved for T."""
    bg = model.bgnbd
    inputs = bgnbd_inputs(state, state.as_of)  # type: ignore[arg-type]
    assert inputs is not None and inputs.x > 0
    odds = (bg.b + inputs.x - 1) / bg.a  # (1 - p) / p = 1 at p = 0.5
    T = (bg.alpha + inputs.t_x) * odds ** (1 / (bg.r + inputs.x)) - bg.alpha
    return origin + timedelta(days=max(T, inputs.t_x))


def _clv_crossing(model: PredictionModel, state: CustomerState, cutoff: float) -> datetime:
    """The first microsecond the CLV is below ``cutoff``, by bisection on the formula."""
    inputs = bgnbd_inputs(state, state.as_of)  # type: ignore[arg-type]
    assert inputs is not None

    def clv(instant: datetime) -> float:
        value = predict(
            model,
            inputs._replace(T=(instant - inputs.origin) / timedelta(days=1)),
            90.0,
            model.clv_months,
            model.annual_discount_rate,
        ).predicted_clv
        assert value is not None
        return value

    low = inputs.origin + timedelta(days=inputs.t_x)
    high = low + timedelta(days=20 * 365)
    if clv(low) < cutoff:
        return low
    while high - low > MICRO:
        middle = low + (high - low) // 2
        if clv(middle) < cutoff:
            high = middle
        else:
            low = middle
    return high


async def test_high_value_at_risk_moves_at_the_instants_the_predictions_cross(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    overrides = {
        **isolated,
        "prediction_min_repeat_buyers": "20",
        "rules_file": str(_rules_without_dwell(tmp_path)),
    }
    settings = settings_from(overrides)
    await ensure_topics(settings)
    rng = np.random.default_rng(7)
    events = []
    first: dict[str, datetime] = {}  # 00:00 UTC of each customer's first order day
    for i in range(CUSTOMERS):
        days = burst_days(rng)
        first[f"c{i}"] = first_day(days[0])
        spend = float(rng.gamma(4.0, 1000.0))  # the customer's own mean order value
        events += [
            placed(f"c{i}", f"c{i}-o{k}", day, total=int(spend * rng.uniform(0.5, 1.5)))
            for k, day in enumerate(days)
        ]
    events.sort(key=lambda e: e["occurred_at"])
    await publish(settings, iter((e["customer_id"].encode(), orjson.dumps(e)) for e in events))
    newest = max(datetime.fromisoformat(e["occurred_at"]) for e in events)
    cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        await wait_for(
            lambda: read_table(settings),
            lambda t: (
                len(t) == CUSTOMERS and max(s.state.as_of or newest for s in t.values()) == newest
            ),
            120,
            "the whole history",
        )
        result = cli_result(overrides, "predict", "fit")
        assert result.returncode == 0, result.stderr
        model = (await read_models(settings))["default"]
        assert len(model.clv_percentiles) == 99
        cutoff = model.clv_percentiles[79]
        table = await wait_for(
            lambda: read_table(settings),
            lambda t: all(s.state.prediction_version == model.version for s in t.values()),
            60,
            "the refit's re-evaluation",
        )
        # -- the refit: in the segment exactly the repeat buyers the formulas put there
        crossings: dict[str, tuple[datetime, datetime]] = {}
        for key, stored in table.items():
            state = stored.state
            inputs = bgnbd_inputs(state, state.as_of)  # type: ignore[arg-type]
            assert inputs is not None and state.as_of is not None
            if inputs.x == 0:
                assert state.segment != SEGMENT
                continue
            customer = state.customer_id
            alive = float(p_alive(model.bgnbd, inputs.x, inputs.t_x, inputs.T))
            value = predict(model, inputs, 90.0, 12, 0.1).predicted_clv
            assert value is not None
            assert (state.segment == SEGMENT) == (alive <= 0.5 and value >= cutoff), key
            crossings[customer] = (
                _alive_crossing(model, state, first[customer]),
                _clv_crossing(model, state, cutoff),
            )
        refit = await _moves(settings)
        assert refit and {e["cause"]["kind"] for _, e in refit} == {"model_refit"}
        assert all(SEGMENT in (e["from_segment"], e["to_segment"]) for _, e in refit)
        # -- event time passes: one order of a new customer, yesterday at the latest
        watermark = min(
            datetime.now(UTC) - timedelta(days=2),
            max(max(a, c) for a, c in crossings.values()) + timedelta(days=1),
        )
        expected: set[tuple[str, str, datetime]] = set()
        for stored in table.values():
            customer, as_of = stored.state.customer_id, stored.state.as_of
            if customer not in crossings:
                continue
            alive_at, clv_at = crossings[customer]
            assert as_of is not None
            if as_of < alive_at <= watermark and alive_at < clv_at:
                expected.add((customer, "in", alive_at))
            if max(as_of, alive_at) < clv_at <= watermark:
                expected.add((customer, "out", clv_at))
        assert {d for _, d, _ in expected} == {"in", "out"}, expected
        day = (watermark - at(0)) / timedelta(days=1)
        await publish(settings, iter([(b"later", orjson.dumps(placed("later", "l1", day)))]))

        def timed(moves: list[tuple[str, dict[str, Any]]]) -> set[tuple[str, str, datetime]]:
            return {
                (c, "in" if e["to_segment"] == SEGMENT else "out", _instant(e))
                for c, e in moves
                if e["cause"]["kind"] == "time"
            }

        moves = await wait_for(
            lambda: _moves(settings),
            lambda m: len(timed(m)) >= len(expected),
            60,
            "the moves time causes",
        )
        got = timed(moves)
        assert {(c, d) for c, d, _ in got} == {(c, d) for c, d, _ in expected}
        instants = {(c, d): when for c, d, when in expected}
        for customer, direction, when in got:
            assert abs(when - instants[customer, direction]) <= MICRO, (customer, direction)
    finally:
        await cache.close()
        assert stop_worker(process) == 0, (tmp_path / "worker.log").read_text()[-3000:]


def _instant(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["event_time"])


async def _moves(settings: Any) -> list[tuple[str, dict[str, Any]]]:
    """The segment changes into or out of the predictive segment."""
    moves = []
    async for record in read_topic(settings, settings.transitions_topic):
        if record.value is None:
            continue
        event = orjson.loads(record.value)
        if event["type"] == "segment_changed" and SEGMENT in (
            event["from_segment"],
            event["to_segment"],
        ):
            moves.append((event["customer_id"], event))
    return moves
