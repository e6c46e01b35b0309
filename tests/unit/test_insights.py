"""The segment insights fold: entries, exits, flows, attributed orders and revenue, monthly
retention, and redelivered records counting once."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from pydantic import ValidationError

from models.insights import (
    Activity,
    Contribution,
    CustomerInsight,
    Totals,
    add,
    apply_activity,
    decode_insight,
    encode_insight,
    in_period,
    retention,
    size_history,
)


def at(day: str, hour: int = 12) -> datetime:
    y, m, d = (int(x) for x in day.split("-"))
    return datetime(y, m, d, hour, tzinfo=UTC)


def move(rid: str, when: datetime, a: str | None, b: str | None, cause: str = "order_placed"):
    return Activity(id=rid, kind="move", shop_id="s", customer_id="c", at=when,
                    from_segment=a, to_segment=b, cause=cause)  # fmt: skip


def order(rid: str, when: datetime, before: str | None, after: str | None, amount: int,
          kind: str = "order_placed") -> Activity:  # fmt: skip
    return Activity(id=rid, kind="order", shop_id="s", customer_id="c", at=when,
                    order_type=kind, order_id=rid, segment_before=before, segment_after=after,
                    amount=amount, currency="EUR")  # type: ignore[arg-type]  # fmt: skip


def fold(
    records: list[Activity],
) -> tuple[CustomerInsight | None, dict[str, Totals], dict[str, Totals]]:
    state: CustomerInsight | None = None
    days: dict[str, Totals] = {}
    months: dict[str, Totals] = {}
    for record in records:
        state, contribution = apply_activity(state, record)
        if contribution is None:
            continue
        days[contribution.day] = add(days.get(contribution.day), contribution, monthly=False)
        if contribution.retained:
            months[contribution.month] = add(
                months.get(contribution.month), contribution, monthly=True
            )
    return state, days, months


def test_a_first_order_counts_for_the_segment_it_puts_the_customer_in() -> None:
    _, days, _ = fold([order("o1", at("2025-01-05"), None, "new", 1000)])
    day = days["2025-01-05"]
    assert day.orders == {"new": 1}
    assert day.revenue == {"new|EUR": 1000}
    assert day.entered == {"new": 1}
    assert day.left == {}
    assert day.flows == {"->new": 1}


def test_an_order_counts_for_the_segment_the_customer_was_in_when_ordering() -> None:
    _, days, _ = fold([
        order("o1", at("2025-01-05"), None, "new", 1000),
        order("o2", at("2025-01-20"), "new", "loyal", 2500),
        order("o2c", at("2025-01-22"), "loyal", "loyal", 2500, kind="order_cancelled"),
    ])  # fmt: skip
    assert days["2025-01-20"].orders == {"new": 1}
    assert days["2025-01-20"].revenue == {"new|EUR": 2500}
    assert days["2025-01-20"].flows == {"new>loyal": 1}
    assert days["2025-01-22"].revenue == {"loyal|EUR": -2500}
    assert "loyal" not in days["2025-01-22"].orders


def test_a_redelivered_record_counts_once() -> None:
    first = [
        order("o1", at("2025-01-05"), None, "new", 1000),
        move("t1", at("2025-03-05"), "new", "inactive", cause="time"),
    ]
    once = fold(first)
    twice = fold(first + first)
    assert once == twice


def test_retention_is_the_share_of_the_months_starting_members_who_ordered_in_it() -> None:
    # c is "new" from January; orders twice in February: counts once for February's "new"
    state, days, months = fold([
        order("o1", at("2025-01-05"), None, "new", 1000),
        order("o2", at("2025-02-03"), "new", "loyal", 1000),
        order("o3", at("2025-02-10"), "loyal", "loyal", 1000),
    ])  # fmt: skip
    assert months == {"2025-02": Totals(retained={"new": 1})}
    feb = {r.segment: r for r in retention(days, months, "2025-02", ["new", "loyal"])}
    assert (feb["new"].customers_at_start, feb["new"].ordered_again, feb["new"].rate) == (1, 1, 1.0)
    assert (feb["loyal"].customers_at_start, feb["loyal"].rate) == (0, None)
    jan = {r.segment: r for r in retention(days, months, "2025-01", ["new"])}
    assert jan["new"].customers_at_start == 0  # nobody was "new" on 1 January
    assert state is not None and state.segment == "loyal"


def test_a_month_without_an_order_keeps_the_customer_in_the_cohort_unretained() -> None:
    _, days, months = fold([
        order("o1", at("2025-01-05"), None, "new", 1000),
        move("t2", at("2025-03-09"), "new", "inactive", cause="time"),
    ])  # fmt: skip
    feb = retention(days, months, "2025-02", ["new"])[0]
    assert (feb.customers_at_start, feb.ordered_again, feb.rate) == (1, 0, 0.0)


def test_sizes_over_time_and_a_period_s_flows() -> None:
    _, days, _ = fold([
        order("o1", at("2025-01-05"), None, "new", 1000),
        move("t2", at("2025-03-09"), "new", "inactive", cause="time"),
    ])  # fmt: skip
    history = size_history(days, ["new", "inactive"])
    assert history.days == ["2025-01-05", "2025-03-09"]
    assert history.sizes == {"new": [1, 0], "inactive": [0, 1]}
    march = in_period(days, date(2025, 3, 1), date(2025, 3, 31))
    assert march.flows == {"new>inactive": 1}
    assert in_period(days, date(2025, 2, 1), date(2025, 2, 28)) == Totals()


def test_an_erasure_leaves_no_state_but_counts_the_exit() -> None:
    state, days, _ = fold([
        order("o1", at("2025-01-05"), None, "new", 1000),
        move("t2", at("2025-01-06"), "new", None, cause="erasure"),
    ])  # fmt: skip
    assert state is None
    assert days["2025-01-06"].left == {"new": 1}


def test_an_erasure_replayed_after_its_state_went_counts_the_exit_once() -> None:
    """A crash after the insights dropped the erased customer's state, before the erasure's
    offset was committed: the replayed erasure finds no state (and no ids to recognise it)."""
    erased = move("t2", at("2025-01-06"), "new", None, cause="erasure")
    state, days, _ = fold([order("o1", at("2025-01-05"), None, "new", 1000), erased, erased])
    assert state is None
    assert days["2025-01-06"].left == {"new": 1}
    assert apply_activity(None, erased) == (None, None)


def test_an_empty_contribution_says_so() -> None:
    assert Contribution(day="2025-01-01", month="2025-01").empty


def test_a_placed_order_that_does_not_count_adds_no_order_but_its_move() -> None:
    record = order("o1", at("2025-01-05"), None, "new", 0)._replace(counted=False)
    _, days, months = fold([record])
    assert days["2025-01-05"].orders == {}
    assert days["2025-01-05"].entered == {"new": 1}
    assert months == {}


def test_a_stored_insight_state_reads_back_and_is_written_as_before() -> None:
    # the layout stored by earlier versions (a pydantic model's JSON) is the layout written now
    stored = (
        b'{"segment":"new","month":"2025-01","month_start_segment":null,'
        b'"retained":true,"seen":["0123456789ab"]}'
    )
    state = decode_insight(stored)
    assert state == CustomerInsight("new", "2025-01", None, True, ("0123456789ab",))
    assert encode_insight(state) == stored
    with pytest.raises(ValidationError):
        decode_insight(b'{"segment":"new","retained":"maybe"}')
