"""A realistic order stream: power-law orders per customer, personal rhythms, several shops,
categories with skewed popularity, discount hunters, cancellations and refunds.

Customers arrive over the period at a steady rate; each has a number of orders drawn from a
discrete Pareto distribution (most buy once or twice, a few dozens of times) and a personal gap
between orders. The stream is generated lazily, in time order, so any prefix of it is a valid
stream and a million customers need no more memory than the customers still active.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

CATEGORIES = (
    "shoes", "shirts", "trousers", "socks", "bags", "coats",
    "dresses", "hats", "belts", "scarves", "gloves", "jewellery",
)  # fmt: skip
# Zipf-like popularity of the categories above.
CATEGORY_WEIGHTS = tuple(1 / (rank + 1) for rank in range(len(CATEGORIES)))
SHOPS = ("shop-nl", "shop-be", "shop-de", "shop-fr")
SHOP_WEIGHTS = (0.5, 0.2, 0.2, 0.1)
MAX_ORDERS = 200


@dataclass(frozen=True)
class StreamSpec:
    customers: int = 1_000_000
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    days: float = 365.0
    # Pareto shape of orders per customer: 1.6 gives a mean of about 2.4 orders.
    pareto_alpha: float = 1.6
    cancel_rate: float = 0.03
    refund_rate: float = 0.02
    seed: int = 2026
    id_prefix: str = "c"


@dataclass
class _Customer:
    index: int
    shop: str
    orders_left: int
    gap_days: float
    discount_share: float
    favourite: str
    placed: int = 0


def order_stream(spec: StreamSpec) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) records of the orders topic, in time order (cancellations and refunds
    come when they happen, after their order)."""
    rng = random.Random(spec.seed)
    mean_arrival_gap = spec.days / spec.customers
    next_arrival = rng.expovariate(1 / mean_arrival_gap)
    arrived = 0
    # (day, sequence, customer placing their next order | a follow-up record)
    pending: list[tuple[float, int, _Customer | tuple[bytes, bytes]]] = []
    seq = 0
    while arrived < spec.customers or pending:
        if arrived < spec.customers and (not pending or next_arrival <= pending[0][0]):
            day, item = next_arrival, _new_customer(rng, spec, arrived)
            arrived += 1
            next_arrival += rng.expovariate(1 / mean_arrival_gap)
        else:
            day, _, item = heapq.heappop(pending)
        if isinstance(item, tuple):
            yield item
            continue
        customer = item
        for later, record in _order(rng, spec, customer, day):
            if later is None:
                yield record
            else:
                seq += 1
                heapq.heappush(pending, (later, seq, record))
        customer.orders_left -= 1
        gap = customer.gap_days * rng.uniform(0.5, 1.5)
        if customer.orders_left > 0 and day + gap <= spec.days:  # the period ends
            seq += 1
            heapq.heappush(pending, (day + gap, seq, customer))


def _new_customer(rng: random.Random, spec: StreamSpec, index: int) -> _Customer:
    orders = min(int(rng.paretovariate(spec.pareto_alpha)), MAX_ORDERS)
    return _Customer(
        index=index,
        shop=rng.choices(SHOPS, SHOP_WEIGHTS)[0],
        orders_left=orders,
        gap_days=rng.choice((3, 7, 14, 30, 45, 60, 90, 120)) * rng.uniform(0.7, 1.3),
        discount_share=rng.choice((0.0, 0.0, 0.0, 0.05, 0.1, 0.3)),
        favourite=rng.choices(CATEGORIES, CATEGORY_WEIGHTS)[0],
    )


def _order(
    rng: random.Random, spec: StreamSpec, customer: _Customer, day: float
) -> Iterator[tuple[float | None, tuple[bytes, bytes]]]:
    """The order placed now (day None) and its cancellation or refund later, if any."""
    customer.placed += 1
    customer_id = f"{spec.id_prefix}{customer.index:07d}"
    order_id = f"{customer_id}-{customer.placed}"
    lines = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        category = (
            customer.favourite
            if rng.random() < 0.6
            else rng.choices(CATEGORIES, CATEGORY_WEIGHTS)[0]
        )
        lines.append(
            {
                "sku": f"{category}-{rng.randrange(500)}",
                "category": category,
                "quantity": rng.choice((1, 1, 1, 2)),
                "unit_price": rng.randrange(500, 12_000),
            }
        )
    gross = sum(line["quantity"] * line["unit_price"] for line in lines)
    discount = int(gross * customer.discount_share)
    key = customer_id.encode()
    common = {"shop_id": customer.shop, "order_id": order_id, "customer_id": customer_id}
    placed = {
        "type": "order_placed",
        **common,
        "occurred_at": _iso(spec, day),
        "currency": "EUR",
        "total": gross - discount,
        "discount": discount,
        "lines": lines,
    }
    yield None, (key, orjson.dumps(placed))
    roll = rng.random()
    if roll < spec.cancel_rate:
        later = day + rng.uniform(1, 48) / 24
        cancel = {"type": "order_cancelled", **common, "occurred_at": _iso(spec, later)}
        yield later, (key, orjson.dumps(cancel))
    elif roll < spec.cancel_rate + spec.refund_rate:
        later = day + rng.uniform(2, 20)
        refund = {
            "type": "order_refunded",
            **common,
            "refund_id": f"{order_id}-r1",
            "occurred_at": _iso(spec, later),
            "currency": "EUR",
            "total": rng.randint(1, max(gross - discount, 1)),
        }
        yield later, (key, orjson.dumps(refund))


def _iso(spec: StreamSpec, day: float) -> str:
    return (spec.start + timedelta(days=day)).isoformat()
