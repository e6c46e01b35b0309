"""Builders of order events for tests (dicts as on the wire, or validated models)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from models.events import ORDER_EVENT

if TYPE_CHECKING:
    from models.bgnbd import BgNbdParams
    from models.predictions import PredictionModel

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


def many_categories(customer: str, number: int) -> dict[str, Any]:
    """An order within the input limits of about 182 KB: 1,000 lines in 1,000 distinct
    128-character categories (a state that kept them all grew by about 133 KB per order)."""
    event = placed(customer, f"o{number}", day=number)
    event["lines"] = [
        {
            "sku": f"s{i}",
            "category": f"{number:02d}{i:04d}".ljust(128, "x"),
            "quantity": 1,
            "unit_price": 1000 + i,
        }
        for i in range(1000)
    ]
    event["total"] = sum(line["unit_price"] for line in event["lines"])
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


def burst_days(rng: Any) -> list[float]:
    """One customer's order days (``at``'s days): 1 to 8 orders at the customer's own pace (3
    to 14 days apart), then silence, starting 700 to 800 days before ``T0`` (event time can
    pass their churn-risk crossings without orders from the future). ``rng``: numpy's."""
    start, gap = float(rng.integers(0, 100)) - 800, float(rng.integers(3, 15))
    return [start + k * gap for k in range(int(rng.integers(1, 9)))]


def first_day(day: float) -> datetime:
    """00:00 UTC of the day of ``at(day)`` (the origin of a customer's BG/NBD T)."""
    return datetime.combine(at(day).date(), datetime.min.time(), tzinfo=UTC)


def prediction_model(bgnbd: BgNbdParams, **fields: Any) -> PredictionModel:
    """A shop's prediction model with ``bgnbd`` (``models.bgnbd.BgNbdParams``): the default
    shop's, version ``p1``, fitted on 2026-01-01 on 100 customers (50 repeat buyers), unless
    ``fields`` say otherwise (``gamma_gamma``, ``clv_percentiles`` ...)."""
    from models.predictions import PredictionModel  # numpy and scipy: only when asked

    defaults: dict[str, Any] = {
        "shop_id": "default",
        "version": "p1",
        "fitted_at": datetime(2026, 1, 1, tzinfo=UTC),
        "customers": 100,
        "repeat_buyers": 50,
        "log_likelihood": -4.0,
    }
    return PredictionModel(**{**defaults, **fields, "bgnbd": bgnbd})
