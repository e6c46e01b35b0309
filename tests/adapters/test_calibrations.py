"""Scheduled recalibration: when it is due, and a computation that leaves the worker's event
loop turning."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from models.scoring import Calibration
from models.segment_model import bootstrap_calibration
from streams.calibrations import YIELD_EVERY, compute_calibrations, recalibration_due
from tests.factories import at, placed
from tests.unit.core import RULES, fold

DAY = timedelta(days=1)
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _quantile(shop: str, computed_at: datetime) -> Calibration:
    return Calibration(
        shop_id=shop,
        version=f"q{computed_at:%Y%m%dT%H%M%SZ}",
        method="quantile",
        customers=100,
        computed_at=computed_at,
        cutoffs=RULES.scoring.cutoffs,
    )


def test_a_recalibration_is_due_an_interval_after_the_oldest_calibration() -> None:
    """A recalibration computes every shop's cut-offs: one shop recalibrated by hand half a
    day ago does not put off the others, calibrated a day and a half ago."""
    shops = [_quantile("a", NOW - DAY * 3 / 2), _quantile("b", NOW - DAY / 2)]
    assert recalibration_due(shops, None, NOW, DAY)
    assert not recalibration_due(shops, None, NOW - DAY, DAY)
    # the rule file's cut-offs (no computed_at) say nothing of when the last one ran
    assert recalibration_due([bootstrap_calibration(RULES, "a")], None, NOW, DAY)
    assert recalibration_due([], None, NOW, DAY)  # never calibrated: at once


def test_an_attempt_that_published_nothing_waits_an_interval_too() -> None:
    assert not recalibration_due([], NOW - DAY / 2, NOW, DAY)
    assert recalibration_due([], NOW - DAY, NOW, DAY)
    # a shop that fell below min_customers keeps its old calibration: tried once per interval
    assert not recalibration_due([_quantile("a", NOW - 2 * DAY)], NOW - DAY / 4, NOW, DAY)


async def test_computing_calibrations_gives_the_event_loop_turns() -> None:
    """The leader computes them while it processes orders: a million customers must not hold
    its event loop for half a minute."""
    states = []
    for i in range(3 * YIELD_EVERY):
        state, _ = fold([placed(f"c{i}", "o1", i % 50, total=1_000 + i)])
        states.append(state)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    start = turns
    calibrations = await compute_calibrations(states, RULES, lambda _shop: at(60))
    counter.cancel()
    assert turns - start >= 3
    assert [(c.shop_id, c.customers) for c in calibrations] == [("default", 3 * YIELD_EVERY)]
