"""Synthetic order streams with known answers, shared by the replay and fault tests."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from tests.factories import cancelled, placed, refunded

CUSTOMERS = 250
SEED = 2026


def synthetic_year(seed: int = SEED, customers: int = CUSTOMERS) -> list[dict[str, Any]]:
    """Orders of customers with their own rhythms, with cancellations, refunds, duplicates and
    some events delivered late (out of time order)."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(customers):
        customer = f"y{i:04d}"
        gap = rng.choice([3, 7, 14, 30, 60, 120])
        day = rng.uniform(0, 90)
        count = rng.randint(1, 30)
        discount_share = rng.choice([0.0, 0.0, 0.05, 0.3])
        for n in range(count):
            if day > 365:
                break
            total = rng.randint(500, 25_000)
            discount = int(total * discount_share)
            order = f"{customer}-{n}"
            events.append(
                placed(
                    customer,
                    order,
                    day,
                    total=total,
                    discount=discount,
                    category=rng.choice(["shoes", "bags", "socks", "coats"]),
                )
            )
            roll = rng.random()
            if roll < 0.08:
                events.append(cancelled(customer, order, day + 0.5))
            elif roll < 0.14:
                events.append(
                    refunded(customer, order, day + 3, rng.randint(1, total) if total else 1)
                )
            if rng.random() < 0.03:
                events.append(dict(events[-1]))  # delivered twice
            day += gap * rng.uniform(0.6, 1.5)
    events.sort(key=lambda e: e["occurred_at"])
    # a few events arrive late: moved up to 40 positions further down the stream
    for _ in range(len(events) // 30):
        a = rng.randrange(len(events) - 41)
        events.insert(a + rng.randint(1, 40), events.pop(a))
    return events


def batch_rfm(events: list[dict[str, Any]]) -> dict[str, tuple[int, int, Any]]:
    """Independent recomputation: per customer (orders that count, net spend, last order)."""
    placed_: dict[tuple[str, str], dict[str, Any]] = {}
    cancelled_: set[tuple[str, str]] = set()
    refunds: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for e in events:
        key = (e["customer_id"], e["order_id"])
        if e["type"] == "order_placed":
            placed_.setdefault(key, e)
        elif e["type"] == "order_cancelled":
            cancelled_.add(key)
        else:
            refunds[key][e.get("refund_id") or e["occurred_at"]] = e["total"]
    result: dict[str, tuple[int, int, Any]] = {}
    per_customer: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for key, e in placed_.items():
        refunded_total = sum(refunds[key].values())
        if key in cancelled_ or (e["total"] > 0 and refunded_total >= e["total"]):
            continue
        per_customer[key[0]].append((e["occurred_at"], max(e["total"] - refunded_total, 0)))
    for customer, orders in per_customer.items():
        result[customer] = (len(orders), sum(t for _, t in orders), max(at for at, _ in orders))
    return result
