"""Quantile calibrations: computed from every customer of a shop (across all partitions, read
from the table's changelog), published to a compacted topic keyed by shop, and followed by every
worker, which then re-evaluates its customers of that shop.

A worker computes them on schedule (the leader, wall clock): the states are kept encoded while
the changelog is read and decoded one at a time, and the computation gives the event loop a
turn every ``YIELD_EVERY`` customers, so the worker goes on processing orders meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime, timedelta

from config.settings import Settings
from models.rules import SegmentRules
from models.scoring import Calibration, calibrate
from models.segment_model import bootstrap_calibration
from models.state import CustomerState, compute_metrics
from streams import shop_topics
from streams.changelog import read_latest
from streams.codecs import decode_calibration, decode_stored, encode_calibration

log = logging.getLogger(__name__)


def calibration_version(computed_at: datetime) -> str:
    return f"q{computed_at.strftime('%Y%m%dT%H%M%SZ')}"


# Customers decoded and measured between two turns of the event loop.
YIELD_EVERY = 500


async def compute_calibrations(
    states: Iterable[CustomerState],
    rules: SegmentRules,
    at: Callable[[str], datetime],
    shop: str | None = None,
) -> list[Calibration]:
    """One quantile calibration per shop, from the R/F/M values of its customers at ``at(shop)``
    (giving the event loop a turn every ``YIELD_EVERY`` customers)."""
    by_shop: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for count, state in enumerate(states, start=1):
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if shop is not None and state.shop_id != shop:
            continue
        instant = at(state.shop_id)
        m = compute_metrics(state, instant, rules, bootstrap_calibration(rules, state.shop_id))
        if m.order_count and m.recency_days is not None:
            by_shop[state.shop_id].append((m.recency_days, m.order_count, m.total_spend))
    return [
        calibrate(shop_id, calibration_version(at(shop_id)), at(shop_id), values)
        for shop_id, values in sorted(by_shop.items())
    ]


async def event_time_clock(states: Iterable[CustomerState]) -> Callable[[str], datetime]:
    """For event-time deployments: a shop's clock is the newest instant any of its states
    reflects."""
    latest: dict[str, datetime] = {}
    for count, state in enumerate(states, start=1):
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if state.as_of is not None and (
            state.shop_id not in latest or state.as_of > latest[state.shop_id]
        ):
            latest[state.shop_id] = state.as_of
    return lambda shop: latest[shop]


def _decoded(values: Iterable[bytes]) -> Iterator[CustomerState]:
    return (decode_stored(value).state for value in values)


async def recalibrate(
    settings: Settings, rules: SegmentRules, now: datetime, shop: str | None = None
) -> list[Calibration]:
    """Compute and publish fresh calibrations; returns what was published."""
    stored = (await read_latest(settings)).values()

    def wall_clock(_shop: str) -> datetime:
        return now

    clock = await event_time_clock(_decoded(stored)) if settings.clock == "event" else wall_clock
    calibrations = await compute_calibrations(_decoded(stored), rules, clock, shop)
    # A shop with too few customers keeps the rule file's cut-offs.
    calibrations = [c for c in calibrations if c.customers >= rules.scoring.min_customers]
    await publish_calibrations(settings, calibrations)
    return calibrations


def recalibration_due(
    calibrations: Iterable[Calibration],
    last_attempt: datetime | None,
    now: datetime,
    interval: timedelta,
) -> bool:
    """Whether a scheduled recalibration is due: ``interval`` after the oldest quantile
    calibration adopted (a recalibration computes every shop's, so one shop recalibrated by
    hand does not put off the others), or after the last attempt (one that published nothing
    new for that shop: it has fallen below ``min_customers``), whichever is later; when there
    is neither, now. Judged from what the topic holds, not from when this worker started: a
    worker restarted more often than the interval recalibrates all the same."""
    computed = [c.computed_at for c in calibrations if c.computed_at is not None]
    return shop_topics.schedule_due(computed, last_attempt, now, interval)


async def publish_calibrations(settings: Settings, calibrations: list[Calibration]) -> None:
    await shop_topics.publish(
        settings,
        settings.calibrations_topic,
        [(c.shop_id, encode_calibration(c)) for c in calibrations],
    )


async def read_calibrations(settings: Settings) -> dict[str, Calibration]:
    """The latest calibration of every shop."""
    return await shop_topics.read_latest(
        settings, settings.calibrations_topic, decode_calibration, lambda c: c.shop_id
    )


async def follow_calibrations(
    settings: Settings, on_calibration: Callable[[Calibration], Awaitable[object]]
) -> None:
    """Call ``on_calibration`` for every calibration on the topic, then for each new one (runs
    until cancelled)."""
    await shop_topics.follow(
        settings, settings.calibrations_topic, decode_calibration, on_calibration, "calibration"
    )
