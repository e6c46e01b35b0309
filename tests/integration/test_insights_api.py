"""The insights API on the real devstack: a worker replays a half year of orders in event-time
mode, ``segmenter api`` serves what its workers added up, and the sizes, flows, revenue,
orders and retention it answers equal those computed here from the input orders and the
transitions the worker published; members come in pages and as CSV; an erased customer is
never returned."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.rules import load_rules
from config.settings import Settings
from models.routing import marketing_transitions
from streams.changelog import read_topic
from streams.cli.privacy_requests import request_erasure
from streams.cli.replay import publish
from streams.lag import group_lag
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, settings_from, wait_for

pytestmark = pytest.mark.integration

TOKEN = "insights-test-token-0123456789"
START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def half_year(customers: int = 30, seed: int = 11) -> list[dict[str, Any]]:
    """Orders of ``customers`` with their own rhythms, some stopping early; one cancellation."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for c in range(customers):
        gap = rng.choice([6, 13, 27, 45])
        count = rng.randint(1, 7)
        at = START + timedelta(days=rng.randint(0, 40), minutes=rng.randint(0, 600) + c)
        for n in range(count):
            events.append({
                "type": "order_placed", "order_id": f"i{c:02d}-o{n}", "customer_id": f"i{c:02d}",
                "shop_id": "shop-a", "occurred_at": at.isoformat(), "currency": "EUR",
                "total": rng.randint(20, 400) * 100, "discount": 0,
                "lines": [{"sku": "S", "category": "shoes", "quantity": 1, "unit_price": 100}],
            })  # fmt: skip
            at += timedelta(days=gap + rng.randint(-2, 2), minutes=17)
    events.sort(key=lambda e: e["occurred_at"])
    # A cancellation two days after an order of a repeat customer.
    placed = next(e for e in events if e["order_id"].endswith("-o1"))
    cancel_at = datetime.fromisoformat(placed["occurred_at"]) + timedelta(days=2, minutes=3)
    events.append({"type": "order_cancelled", "order_id": placed["order_id"],
                   "customer_id": placed["customer_id"], "shop_id": "shop-a",
                   "occurred_at": cancel_at.isoformat()})  # fmt: skip
    # The watermark passes the last order by half a year: time moves the customers as well.
    events.append({
        "type": "order_placed", "order_id": "late-o0", "customer_id": "late",
        "shop_id": "shop-a", "occurred_at": (START + timedelta(days=200)).isoformat(),
        "currency": "EUR", "total": 1000, "discount": 0,
        "lines": [{"sku": "S", "category": "shoes", "quantity": 1, "unit_price": 1000}],
    })  # fmt: skip
    events.sort(key=lambda e: e["occurred_at"])
    return events


@pytest.fixture
def stack(isolated: dict[str, str], tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    overrides = {**isolated, "partitions": "2", "api_token": TOKEN, "api_port": str(free_port())}
    settings = settings_from(overrides)
    asyncio.run(ensure_topics(settings, marketing_transitions(load_rules())))
    worker = spawn_worker(overrides, tmp_path / "worker.log")
    env = {f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()}
    api_log = (tmp_path / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "api"],
        env={**os.environ, **env},
        stdout=api_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield overrides, f"http://127.0.0.1:{overrides['api_port']}"
    finally:
        api.terminate()
        api.wait(15)
        api_log.close()
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert stop_worker(worker) == 0, log[-3000:]
        assert "Traceback" not in log, log[-5000:]


def get(url: str, token: str | None = TOKEN) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        if response.headers.get("Content-Type", "").startswith("text/csv"):
            return body.decode()
        return orjson.loads(body)


async def api_get(url: str) -> Any:
    try:
        return await asyncio.to_thread(get, url)
    except (urllib.error.URLError, ConnectionError):
        return None


def segment_at(moves: list[dict[str, Any]], instant: datetime) -> str | None:
    """The customer's segment just before ``instant``, from their transitions."""
    segment = None
    for move in moves:
        if datetime.fromisoformat(move["event_time"]) < instant:
            segment = move["to_segment"]
    return segment


@dataclass
class Expected:
    """What the insights must add up to, computed from the input orders and the transitions
    the worker published (not from the insights)."""

    moves: dict[str, list[dict[str, Any]]]
    final: Counter[str]
    flows: Counter[tuple[str, str]]
    orders: Counter[str | None]
    revenue: Counter[str | None]
    placed: dict[str, dict[str, Any]]


async def expected_insights(settings: Settings, events: list[dict[str, Any]]) -> Expected:
    transitions = [
        orjson.loads(r.value) async for r in read_topic(settings, settings.transitions_topic)
    ]
    moves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in transitions:
        if t["type"] == "segment_changed":
            moves[t["customer_id"]].append(t)
    for customer in moves.values():
        customer.sort(key=lambda t: t["event_time"])
    final = Counter(m[-1]["to_segment"] for m in moves.values() if m[-1]["to_segment"])
    flows = Counter(
        (t["from_segment"] or "-", t["to_segment"] or "-") for m in moves.values() for t in m
    )
    placed = {e["order_id"]: e for e in events if e["type"] == "order_placed"}
    orders: Counter[str | None] = Counter()
    revenue: Counter[str | None] = Counter()
    for e in events:
        instant = datetime.fromisoformat(e["occurred_at"])
        history = moves[e["customer_id"]]
        before = segment_at(history, instant)
        if e["type"] == "order_placed":
            caused = [t for t in history if t["cause"].get("order_id") == e["order_id"]]
            segment = before or (caused[0]["to_segment"] if caused else None)
            orders[segment] += 1
            revenue[segment] += e["total"]
        else:  # a cancellation: the order's total leaves the segment of that moment
            revenue[before] -= placed[e["order_id"]]["total"]
    return Expected(moves, final, flows, orders, revenue, placed)


async def test_the_api_answers_what_the_orders_and_transitions_add_up_to(
    stack: tuple[dict[str, str], str],
) -> None:
    overrides, base = stack
    settings = settings_from(overrides)
    events = half_year()
    records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
    assert await publish(settings, iter(records)) == len(records)
    await wait_for(
        lambda: group_lag(settings),
        lambda lag: bool(lag) and all(p.committed == p.end for p in lag),
        120,
        "the worker to process the orders",
    )
    expected = await expected_insights(settings, events)
    moves, final, flows = expected.moves, expected.final, expected.flows
    orders, revenue, placed = expected.orders, expected.revenue, expected.placed
    segments = list(load_rules().segment_names)
    shop = f"{base}/api/shops/shop-a"

    # -- the API, once the workers have added everything up ---------------------------------------
    period = "start=2024-12-01&end=2026-12-31"
    performance = await wait_for(
        lambda: api_get(f"{shop}/performance?{period}"),
        lambda p: p is not None and sum(s["orders"] for s in p["segments"]) == len(placed),
        60,
        "the insights to count every order",
    )
    got_orders = {s["segment"]: s["orders"] for s in performance["segments"] if s["orders"]}
    got_revenue = {
        s["segment"]: s["revenue"].get("EUR", 0) for s in performance["segments"] if s["revenue"]
    }
    assert got_orders == {k: v for k, v in orders.items() if v}
    assert got_revenue == {k: v for k, v in revenue.items() if v}

    sizes = get(f"{shop}/segments")
    assert {s["segment"]: s["size"] for s in sizes["segments"] if s["size"]} == dict(final)
    assert sizes["total"] == len(moves)
    history = get(f"{shop}/history")
    assert {s: history["sizes"][s][-1] for s in segments if history["sizes"][s][-1]} == dict(final)

    matrix = get(f"{shop}/flows?{period}")["matrix"]
    got_flows = {(a, b): n for a, row in matrix.items() for b, n in row.items() if n}
    assert got_flows == dict(flows)
    march = get(f"{shop}/flows?start=2025-03-01&end=2025-03-31")["matrix"]
    in_march = Counter(
        (t["from_segment"] or "-", t["to_segment"] or "-")
        for m in moves.values()
        for t in m
        if t["event_time"][:7] == "2025-03"
    )
    assert {(a, b): n for a, row in march.items() for b, n in row.items() if n} == dict(in_march)

    retention = get(f"{shop}/retention?month=2025-03&month=2025-04")["retention"]
    for month, start in (("2025-03", datetime(2025, 3, 1, tzinfo=UTC)),
                         ("2025-04", datetime(2025, 4, 1, tzinfo=UTC))):  # fmt: skip
        cohort: Counter[str] = Counter()
        again: Counter[str] = Counter()
        for customer, history_ in moves.items():
            segment = segment_at(history_, start)
            if segment is None:
                continue
            cohort[segment] += 1
            if any(
                e["customer_id"] == customer
                and e["type"] == "order_placed"
                and e["occurred_at"][:7] == month
                for e in events
            ):
                again[segment] += 1
        rows = {r["segment"]: r for r in retention if r["month"] == month}
        for segment in segments:
            assert rows[segment]["customers_at_start"] == cohort[segment], (month, segment)
            assert rows[segment]["ordered_again"] == again[segment], (month, segment)
        assert sum(cohort.values()) > 5

    # -- members: pages, CSV; one customer's why -------------------------------------------------
    biggest = final.most_common(1)[0][0]
    members: list[str] = []
    cursor = ""
    while True:
        page = get(f"{shop}/segments/{biggest}/members?limit=3&cursor={cursor}")
        assert len(page["members"]) <= 3
        members += [m["customer_id"] for m in page["members"]]
        if page["next"] is None:
            break
        cursor = page["next"]
    expected_members = sorted(c for c, m in moves.items() if m[-1]["to_segment"] == biggest)
    assert sorted(members) == expected_members
    rows = list(csv.DictReader(io.StringIO(get(f"{shop}/segments/{biggest}/members?format=csv"))))
    assert sorted(r["customer_id"] for r in rows) == expected_members

    someone = expected_members[0]
    why = get(f"{shop}/customers/{someone}")
    assert why["segment"] == biggest
    assert why["rule"]["name"] == biggest
    spent = sum(
        e["total"] for e in events if e["customer_id"] == someone and e["type"] == "order_placed"
    )
    cancelled = sum(
        placed[e["order_id"]]["total"]
        for e in events
        if e["customer_id"] == someone and e["type"] == "order_cancelled"
    )
    assert why["rfm"]["monetary"] == spent - cancelled

    # -- the token, and an erased customer -------------------------------------------------------
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{shop}/segments", token="wrong-token-0123456789")
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        get(f"{shop}/segments", token=None)
    receipt = await request_erasure(settings, "shop-a", someone, wait=True, timeout=60)
    assert receipt["state_deleted"] is True

    async def gone() -> bool:
        try:
            await asyncio.to_thread(get, f"{shop}/customers/{someone}")
        except urllib.error.HTTPError as exc:
            return exc.code == 404
        return False

    await wait_for(gone, bool, 60, "the erased customer to be gone from the API")
    page = get(f"{shop}/segments/{biggest}/members?limit=1000")
    assert someone not in [m["customer_id"] for m in page["members"]]
    openapi = get(f"{base}/api/openapi.json", token=None)
    assert "/api/shops/{shop}/flows" in openapi["paths"]
