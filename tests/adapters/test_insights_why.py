"""The customer's "why" of the insights API, from the fields the worker caches in Redis."""

from __future__ import annotations

from streams.insights.api import _why


def _fields(**extra: str) -> dict[str, str]:
    return {
        "shop_id": "default",
        "customer_id": "c1",
        "segment": "loyal",
        "order_count": "4",
        "total_spend": "12000",
        "recency_days": "3.5",
        "last_order_at": "2025-03-01T10:00:00+00:00",
        "inactive_after_days": "30",
        "currency": "EUR",
        **extra,
    }


def test_the_why_carries_the_predictions_the_worker_cached() -> None:
    why = _why(
        "c1",
        _fields(
            p_alive="0.812345",
            expected_orders_90d="1.2500",
            predicted_clv="4200",
            prediction_model="default-bgnbd-1",
        ),
        {},
        "v1",
    )
    assert why["predictions"] == {
        "p_alive": 0.812345,
        "expected_orders_90d": 1.25,
        "predicted_clv": 4200.0,
        "model": "default-bgnbd-1",
    }
    assert why["next_due"]["to_segment"] == "inactive"
    assert why["next_due"]["at"] == "2025-03-31T10:00:00+00:00"


def test_without_a_model_for_the_shop_there_are_no_predictions() -> None:
    empty = {name: "" for name in ("p_alive", "expected_orders_90d", "predicted_clv")}
    assert _why("c1", _fields(**empty), {}, "v1")["predictions"] is None
    assert _why("c1", _fields(), {}, "v1")["predictions"] is None
