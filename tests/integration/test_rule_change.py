"""A worker restarted with a new rule set re-evaluates its customers, cause ``rule_change``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from config.rules import DEFAULT_RULES_FILE, load_rules
from models.routing import marketing_transitions
from streams.changelog import read_topic
from streams.cli.replay import publish
from streams.lag import group_lag
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import settings_from, wait_for
from tests.factories import placed

pytestmark = pytest.mark.integration


async def _moves(settings) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    return [
        (t["from_segment"], t["to_segment"], t["cause"]["kind"], t["rule_version"])
        async for r in read_topic(settings, settings.transitions_topic)
        if (t := orjson.loads(r.value))["type"] == "segment_changed"
    ]


async def test_a_new_rule_set_moves_customers_with_cause_rule_change(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_from(isolated)
    await ensure_topics(settings, marketing_transitions(load_rules()))
    # 25 % of the value paid by discounts: a champion, not a best customer, under the default map
    orders = [placed("rita", f"r-o{i}", i * 10, total=9_000, discount=3_000) for i in range(4)]
    await publish(settings, iter((b"rita", orjson.dumps(o)) for o in orders))

    first = spawn_worker(isolated, tmp_path / "first.log")
    try:
        await wait_for(
            lambda: group_lag(settings),
            lambda lag: [(p.committed, p.end) for p in lag] == [(4, 4)],
            90,
            "the first worker to process the orders",
        )
        moves = await wait_for(lambda: _moves(settings), lambda m: len(m) >= 3, 30, "moves")
    finally:
        assert await asyncio.to_thread(stop_worker, first) == 0
    assert moves[-1] == ("potential_loyalist", "champions", "order_placed", "rfm-2026.12.1")

    lenient = tmp_path / "segments.yaml"
    lenient.write_text(
        DEFAULT_RULES_FILE.read_text()
        .replace("version: rfm-2026.12.1", "version: rfm-lenient")
        .replace("max_discount_share: 0.10", "max_discount_share: 0.30")
    )
    second = spawn_worker({**isolated, "rules_file": str(lenient)}, tmp_path / "second.log")
    try:
        moves = await wait_for(
            lambda: _moves(settings), lambda m: len(m) >= 4, 90, "the re-evaluation"
        )
    finally:
        assert await asyncio.to_thread(stop_worker, second) == 0
    assert moves[3:] == [("champions", "best_customer", "rule_change", "rfm-lenient")]
