"""A simulated year of a few thousand orders, replayed in event-time mode on the real broker:
the worker's final R/F/M values must equal a batch recomputation from the same orders, and the
transitions must tell a consistent story that ends in every customer's final segment."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.rules import load_rules
from models.routing import marketing_transitions
from streams.calibrations import recalibrate
from streams.changelog import read_table, read_topic
from streams.cli.replay import publish
from streams.lag import group_lag
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import settings_from, wait_for
from tests.factories import T0
from tests.synthetic import batch_rfm, synthetic_year

pytestmark = pytest.mark.integration


@pytest.fixture
def replay_worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    overrides = {**isolated, "partitions": "2"}
    settings = settings_from(overrides)
    asyncio.run(ensure_topics(settings, marketing_transitions(load_rules())))
    process = spawn_worker(overrides, tmp_path / "worker.log")
    yield overrides
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert stop_worker(process) == 0, log[-3000:]
    assert "Traceback" not in log, log[-5000:]


async def test_a_replayed_year_matches_a_batch_recomputation(
    replay_worker: dict[str, str],
) -> None:
    settings = settings_from(replay_worker)
    events = synthetic_year()
    assert len(events) > 2_000
    records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
    assert await publish(settings, iter(records)) == len(records)
    await wait_for(
        lambda: group_lag(settings),
        lambda lag: (
            bool(lag)
            and all(p.committed == p.end for p in lag)
            and sum(p.end for p in lag) == len(records)
        ),
        240,
        "the worker to process the year",
        interval=1.0,
    )

    table = {k: v.state for k, v in (await read_table(settings)).items()}
    expected = batch_rfm(events)
    rules = load_rules()
    from models.segment_model import bootstrap_calibration
    from models.state import compute_metrics

    calibration = bootstrap_calibration(rules, "default")
    end = T0 + timedelta(days=400)
    mismatches = []
    for customer, (count, spend, last) in expected.items():
        state = table[f"default/{customer}"]
        m = compute_metrics(state, end, rules, calibration)
        batch_recency = round((end - _dt(last)).total_seconds() / 86_400, 4)
        if (m.order_count, m.total_spend, m.recency_days) != (count, spend, batch_recency):
            mismatches.append(
                (
                    customer,
                    (m.order_count, m.total_spend, m.recency_days),
                    (count, spend, batch_recency),
                )
            )
    assert mismatches == []
    no_orders = {k for k, s in table.items() if not s.counted_orders()}
    assert no_orders == {f"default/{c}" for c in {e["customer_id"] for e in events}} - {
        f"default/{c}" for c in expected
    }

    transitions = await _transitions(settings)
    _assert_consistent(transitions, table)

    # An explicit recalibration: quantile cut-offs over all 250 customers (both partitions),
    # adopted by the worker, which re-evaluates every customer under them.
    published = await recalibrate(settings, rules, datetime.now(UTC))
    assert [(c.shop_id, c.customers) for c in published] == [("default", len(expected))]
    version = published[0].version
    table = await wait_for(
        lambda: _states(settings),
        lambda states: all(s.calibration_version == version for s in states.values()),
        120,
        "every customer re-evaluated under the new calibration",
        interval=1.0,
    )
    after = await _transitions(settings)
    before_ids = {t["event_id"] for t in transitions}
    caused = [
        t for t in after if t["event_id"] not in before_ids and t["type"] == "segment_changed"
    ]
    assert caused, "quantile cut-offs differ from the bootstrap ones: some customers move"
    assert {(t["cause"]["kind"], t["calibration_version"]) for t in caused} == {
        ("recalibration", version)
    }
    assert {t["backfill"] for t in caused} == {True}
    _assert_consistent(after, table)


async def _transitions(settings) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [orjson.loads(r.value) async for r in read_topic(settings, settings.transitions_topic)]


async def _states(settings) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {k: v.state for k, v in (await read_table(settings)).items()}


def _dt(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _assert_consistent(transitions: list[dict[str, Any]], table: dict[str, Any]) -> None:
    """Per customer, segment moves chain (each starts where the previous ended) and end in the
    final segment; tag changes add and remove alternately and end in the final tags. (All of a
    customer's transitions share one partition, so the topic's read order is their order.)"""
    segments: dict[str, str | None] = defaultdict(lambda: None)
    tags: dict[str, set[str]] = defaultdict(set)
    broken = []
    for t in transitions:
        key = f"{t['shop_id']}/{t['customer_id']}"
        if t["type"] == "segment_changed":
            if t["from_segment"] != segments[key]:
                broken.append((key, segments[key], t["from_segment"], t["to_segment"]))
            segments[key] = t["to_segment"]
        elif t["change"] == "added":
            if t["tag"] in tags[key]:
                broken.append((key, "added twice", t["tag"]))
            tags[key].add(t["tag"])
        else:
            if t["tag"] not in tags[key]:
                broken.append((key, "removed but absent", t["tag"]))
            tags[key].discard(t["tag"])
    assert broken == []
    assert {k: s.segment for k, s in table.items()} == {k: segments[k] for k in table}
    assert {k: set(s.tags) for k, s in table.items()} == {k: tags[k] for k in table}
    assert len({t["event_id"] for t in transitions}) == len(transitions)
