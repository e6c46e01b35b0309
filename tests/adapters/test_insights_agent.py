"""The insights agent's batch step: a stored row it cannot read costs that record only, and a
batch the broker refused stops the worker instead of going on past it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from models.insights import Activity, Totals
from streams.insights.agent import Insights, add_batch, customer_key, totals_key
from streams.insights.records import encode_activity

AT = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


class Table:
    """A table as the agent uses it: rows by key, one partition."""

    def __init__(self, rows: dict[bytes, bytes] | None = None) -> None:
        self.rows = dict(rows or {})

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.rows.get(key)

    def put_many(self, rows: list[tuple[int, bytes, bytes]]) -> None:
        for _partition, key, value in rows:
            self.rows[key] = value

    def pop(self, key: bytes) -> None:
        self.rows.pop(key, None)


def placed(customer: str, order: str, offset: int) -> Any:
    record = Activity(
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
    return SimpleNamespace(value=encode_activity(record), topic="act", partition=0, offset=offset)


def agent(customers: Table) -> Insights:
    insights = Insights.__new__(Insights)
    insights.customers, insights.totals, insights.dirty = customers, Table(), set()  # type: ignore[assignment]
    return insights


def test_a_record_whose_stored_row_cannot_be_read_is_skipped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    corrupt = customer_key("s", "bad")
    insights = agent(Table({corrupt: b"{not json"}))
    with caplog.at_level(logging.ERROR):
        insights.apply([placed("bad", "o1", 7), placed("good", "o2", 8)], lambda _m: None)
    assert "act[0]@7 skipped: its stored insights cannot be read" in caplog.text
    assert insights.customers.rows[corrupt] == b"{not json"  # left as it was
    assert b'"segment":"new"' in insights.customers.rows[customer_key("s", "good")]
    day = Totals.model_validate_json(insights.totals.rows[totals_key(0, "s", "d:2026-03-04")])
    assert (day.entered, day.orders, day.revenue) == ({"new": 1}, {"new": 1}, {"new|EUR": 2500})
    assert insights.totals.rows[totals_key(0, "s", "n")] == b"1"  # the good record only


class Source:
    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.forgotten: list[Any] = []

    def activate(self, message: Any | None) -> None:
        pass

    def ack(self, messages: Any) -> None:
        self.acked += messages

    def forget(self, messages: Any) -> None:
        self.forgotten += messages


class Written:
    def __init__(self, error: BaseException | None = None, in_apply: bool = False) -> None:
        self.error, self.in_apply, self.applied = error, in_apply, 0

    def apply(self, messages: Any, activate: Any) -> None:
        if self.in_apply and self.error:
            raise self.error
        self.applied += len(messages)

    async def written(self) -> None:
        if not self.in_apply and self.error:
            raise self.error


async def test_a_batch_is_acknowledged_once_its_changelog_records_are() -> None:
    source, stops = Source(), []
    await add_batch(Written(), source, ["m1", "m2"], stops.append)
    assert (source.acked, source.forgotten, stops) == (["m1", "m2"], [], [])


async def test_a_batch_the_broker_refused_stops_the_worker_unacknowledged() -> None:
    source, stops, refused = Source(), [], RuntimeError("broker refused the changelog")
    with pytest.raises(RuntimeError):
        await add_batch(Written(refused), source, ["m1", "m2"], stops.append)
    assert (source.acked, source.forgotten, stops) == ([], ["m1", "m2"], [refused])


async def test_a_failed_apply_is_forgotten_without_stopping_the_worker() -> None:
    source, stops = Source(), []
    with pytest.raises(ValueError):
        await add_batch(Written(ValueError("bug"), in_apply=True), source, ["m1"], stops.append)
    assert (source.acked, source.forgotten, stops) == ([], ["m1"], [])
