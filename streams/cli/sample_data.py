"""A deterministic sample of a webshop's year of orders, for the demo.

Customers follow recognisable patterns (weekly small baskets, monthly full-price buyers,
discount hunters, one-time buyers, customers who lapse), so every segment shows up.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

CATEGORIES = ("shoes", "shirts", "trousers", "socks", "bags", "jackets", "accessories")
START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
END = START + timedelta(days=365)


def _order(
    rng: random.Random,
    customer: str,
    number: int,
    at: datetime,
    total: int,
    discount: int,
    favourites: tuple[str, ...],
) -> dict[str, Any]:
    # Most orders are in the customer's favourite categories, some are not.
    category = rng.choice(favourites) if rng.random() < 0.8 else rng.choice(CATEGORIES)
    quantity = rng.randint(1, 3)
    return {
        "type": "order_placed",
        "order_id": f"{customer}-o{number}",
        "customer_id": customer,
        "occurred_at": at.isoformat(),
        "currency": "EUR",
        "total": total,
        "discount": discount,
        "lines": [
            {
                "sku": f"{category[:3].upper()}-{rng.randint(100, 999)}",
                "category": category,
                "quantity": quantity,
                "unit_price": (total + discount) // quantity,
            }
        ],
    }


def _series(
    rng: random.Random,
    customer: str,
    first: datetime,
    gap_days: float,
    count: int,
    total: tuple[int, int],
    discount_share: float,
) -> list[dict[str, Any]]:
    events = []
    at = first
    favourites = tuple(rng.sample(CATEGORIES, rng.randint(1, 2)))
    for number in range(1, count + 1):
        if at >= END:
            break
        amount = rng.randint(*total)
        discount = int(amount * discount_share)
        events.append(_order(rng, customer, number, at, amount - discount, discount, favourites))
        at += timedelta(days=gap_days * rng.uniform(0.8, 1.2), hours=rng.randint(0, 8))
    return events


def sample_events(customers: int = 40, seed: int = 7) -> list[dict[str, Any]]:
    """A year of order events for ``customers`` customers, sorted by time."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    patterns = (
        ("weekly", 7, 40, (900, 2200), 0.15),  # small baskets, with coupons
        ("monthly", 30, 12, (9000, 20000), 0.0),  # best customers: frequent enough, full price
        ("hunter", 21, 14, (6000, 12000), 0.35),  # discount hunters
        ("lapsing", 10, 8, (3000, 6000), 0.05),  # regulars who stop buying
        ("once", 1, 1, (2500, 9000), 0.0),  # one order only
    )
    for i in range(customers):
        name, gap, count, totals, share = patterns[i % len(patterns)]
        customer = f"c{i:03d}-{name}"
        first = START + timedelta(days=rng.uniform(0, 120))
        events += _series(rng, customer, first, gap, count, totals, share)
    # A cancellation and a refund, as webshops send them.
    placed = [e for e in events if e["customer_id"].endswith("once")]
    if placed:
        cancel = placed[0]
        events.append(
            {
                "type": "order_cancelled",
                "order_id": cancel["order_id"],
                "customer_id": cancel["customer_id"],
                "occurred_at": (
                    datetime.fromisoformat(cancel["occurred_at"]) + timedelta(hours=3)
                ).isoformat(),
            }
        )
    events.sort(key=lambda e: (e["occurred_at"], e["order_id"]))
    return events


def bad_records() -> list[tuple[bytes | None, bytes]]:
    """Records a real stream contains now and then; the worker dead-letters them."""
    return [
        (b"c999", b'{"type": "order_placed", "order_id": '),
        (
            b"c998",
            orjson.dumps(
                {
                    "type": "order_placed",
                    "order_id": "bad-1",
                    "customer_id": "c998",
                    "occurred_at": END.isoformat(),
                    "currency": "EUR",
                    "total": -500,
                }
            ),
        ),
    ]


def sample_records(customers: int = 40, seed: int = 7) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) records of the sample, with a few bad ones mixed in mid-stream."""
    events = sample_events(customers, seed)
    bad = bad_records()
    middle = len(events) // 2
    for index, event in enumerate(events):
        if index == middle:
            yield from bad
        yield event["customer_id"].encode(), orjson.dumps(event)
