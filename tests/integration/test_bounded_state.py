"""A customer whose orders hold 1,000 long categories each: the worker stores a small state
and goes on (the state used to outgrow the broker's maximum record size)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.changelog import read_latest
from streams.cli.replay import publish
from streams.codecs import decode_stored
from streams.lag import group_lag
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, settings_from, wait_for
from tests.factories import many_categories, placed

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {**isolated, "web_port": str(free_port())}
    asyncio.run(ensure_topics(settings_from(overrides)))
    process = spawn_worker(overrides, tmp_path / "worker.log")
    yield overrides
    status = stop_worker(process)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
    assert status == 0, log[-3000:]


async def test_orders_of_a_thousand_categories_give_a_small_stored_state(
    worker: dict[str, str],
) -> None:
    settings = settings_from(worker)
    events = [many_categories("hostile", n) for n in range(8)]
    events.append(placed("hostile", "o8", day=8))  # and the customer goes on
    records = [(b"hostile", orjson.dumps(e)) for e in events]
    assert all(len(value) > 180_000 for _, value in records[:8])
    assert await publish(settings, iter(records)) == len(records)
    await wait_for(
        lambda: group_lag(settings),
        lambda lag: [(p.committed, p.end) for p in lag] == [(len(records), len(records))],
        120,
        "the worker to commit every order",
    )
    latest = await wait_for(
        lambda: read_latest(settings),
        lambda table: (
            b"default/hostile" in table
            and decode_stored(table[b"default/hostile"]).state.revision == len(records)
        ),
        60,
        "the customer's last state in the changelog",
    )
    value = latest[b"default/hostile"]
    assert len(value) < 20_000
    state = decode_stored(value).state
    assert len(state.orders) == len(records)
    assert sum(r.total for r in state.orders.values()) == sum(e["total"] for e in events)
