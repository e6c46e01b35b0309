"""Wall-clock mode: a time-caused transition fires at the customer's due time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from config.rules import load_rules
from streams.changelog import read_topic
from streams.replay import publish
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import settings_from, wait_for

pytestmark = pytest.mark.integration
RULES = load_rules()
LEAD = timedelta(seconds=20)  # time for the worker to start and take the order


@pytest.fixture
def wall_worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {**isolated, "clock": "wall", "partitions": "2", "clock_interval_seconds": "0.5"}
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
        return [
            orjson.loads(r.value) async for r in read_topic(settings.kafka_bootstrap_servers, topic)
        ]

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
    return [
        orjson.loads(r.value) async for r in read_topic(settings.kafka_bootstrap_servers, topic)
    ]
