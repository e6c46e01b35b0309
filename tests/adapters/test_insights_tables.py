"""The insight tables' batch step: a stored row it cannot read costs that record only."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from models.insights import Activity, Totals
from streams.insights.tables import customer_key, totals_key
from tests.adapters.fakes import InsightTables, Log

AT = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


def placed(customer: str, order: str) -> tuple[int, Activity]:
    return 0, Activity(
        id=f"{customer}-{order}",
        kind="order",
        shop_id="s",
        customer_id=customer,
        at=AT,
        order_type="order_placed",
        order_id=order,
        segment_after="new",
        amount=2500,
        currency="EUR",
    )


def test_a_record_whose_stored_row_cannot_be_read_is_skipped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    corrupt = customer_key("s", "bad")
    insights = InsightTables(Log())
    insights.customers[corrupt] = b"{not json"
    with caplog.at_level(logging.ERROR):
        insights.add([placed("bad", "o1"), placed("good", "o2")])
    assert "of customer 'bad' skipped: its stored insights cannot be read" in caplog.text
    assert insights.customers[corrupt] == b"{not json"  # left as it was
    assert b'"segment":"new"' in insights.customers[customer_key("s", "good")]
    day = Totals.model_validate_json(insights.totals[totals_key(0, "s", "d:2026-03-04")])
    assert (day.entered, day.orders, day.revenue) == ({"new": 1}, {"new": 1}, {"new|EUR": 2500})
    assert insights.totals[totals_key(0, "s", "n")] == b"1"  # the good record only
