"""Builders of order events for tests (dicts as on the wire, or validated models)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from models.events import ORDER_EVENT

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def placed(
    customer: str,
    order: str,
    day: float,
    total: int = 5000,
    discount: int = 0,
    category: str = "shoes",
    currency: str = "EUR",
    shop: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "order_placed",
        "order_id": order,
        "customer_id": customer,
        "occurred_at": (T0 + timedelta(days=day)).isoformat(),
        "currency": currency,
        "total": total,
        "discount": discount,
        "lines": [
            {
                "sku": f"{category}-1",
                "category": category,
                "quantity": 1,
                "unit_price": total + discount,
            }
        ],
    }
    if shop:
        event["shop_id"] = shop
    return event


def cancelled(customer: str, order: str, day: float) -> dict[str, Any]:
    return {
        "type": "order_cancelled",
        "order_id": order,
        "customer_id": customer,
        "occurred_at": (T0 + timedelta(days=day)).isoformat(),
    }


def refunded(
    customer: str, order: str, day: float, total: int, refund_id: str | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "order_refunded",
        "order_id": order,
        "customer_id": customer,
        "occurred_at": (T0 + timedelta(days=day)).isoformat(),
        "currency": "EUR",
        "total": total,
    }
    if refund_id:
        event["refund_id"] = refund_id
    return event


def model(event: dict[str, Any]):  # type: ignore[no-untyped-def]
    return ORDER_EVENT.validate_python(event)


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)
