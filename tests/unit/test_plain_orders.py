"""The plain path of order events (``plain_order``) gives what validation gives, or leaves the
event to validation: the same random events, valid and not, are fed to both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from models.events import MAX_AMOUNT, ORDER_EVENT, OrderPlaced, plain_order

RECEIVED = datetime(2026, 6, 1, tzinfo=UTC)

ids = st.one_of(
    st.sampled_from(["c1", "o-77", "x" * 128, "x" * 129, "", " c1", "c 1", "c/1", "c:1", "é"]),
    st.text(max_size=6),
    st.from_regex(r"[!-~]{1,8}", fullmatch=True),
    st.integers(),
    st.none(),
)
names = st.one_of(
    st.sampled_from(["shoes", "red shoes", " shoes", "shoes ", "", "s" * 128, "s" * 129]),
    st.text(max_size=6),
    st.integers(),
)
offsets = st.sampled_from(["Z", "+00:00", "+02:00", "-05:30", "+23:59", "+24:00", "z", ""])
instants = st.one_of(
    st.builds(
        lambda when, micro, digits, offset, sep: (
            when.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
            + (f".{micro:06d}"[: digits + 1] if digits else "")
            + offset
        ),
        st.datetimes(min_value=datetime(1985, 1, 1), max_value=datetime(2027, 12, 31)),
        st.integers(0, 999_999),
        st.integers(0, 9),
        offsets,
        st.sampled_from(["T", "T", "T", " ", "t"]),
    ),
    st.sampled_from(
        ["2025-02-30T00:00:00Z", "2025-01-01T24:00:00Z", "2025-01-01T23:59:60Z", "2025-01-01"]
    ),
    st.integers(0, 2_000_000_000),
)
amounts = st.one_of(
    st.integers(-2, 3),
    st.integers(0, MAX_AMOUNT + 1),
    st.sampled_from([MAX_AMOUNT, MAX_AMOUNT + 1, True, False, 1.0, "100", None]),
)
lines = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "sku": names,
                "category": names,
                "quantity": st.one_of(st.integers(-1, 100_001), st.sampled_from([True, 2.0])),
                "unit_price": amounts,
            },
            optional={"note": st.text(max_size=3)},
        ),
        st.sampled_from([None, 3, [], {}]),
    ),
    max_size=3,
)
events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["order_placed", "order_cancelled", "order_refunded", "order_placed", "placed", 1]
        ),
        "customer_id": ids,
        "order_id": ids,
        "occurred_at": instants,
    },
    optional={
        "shop_id": st.one_of(ids, st.sampled_from(["shop-nl", "a" * 64, "a" * 65])),
        "currency": st.sampled_from(["EUR", "USD", "XXX", "eur", "EURO", 978]),
        "total": amounts,
        "discount": amounts,
        "lines": st.one_of(lines, st.sampled_from([None, "shoes", ()])),
        "refund_id": st.one_of(ids, st.none()),
        "email": st.text(max_size=4),
    },
)


# mostly valid: one field at a time goes astray
good_ids = st.from_regex(r"[!-~]{1,8}", fullmatch=True)
good_instants = st.builds(
    lambda when, offset: when.isoformat(timespec="microseconds") + offset,
    st.datetimes(min_value=datetime(1989, 12, 31), max_value=datetime(2026, 6, 3)),
    st.sampled_from(["Z", "+00:00", "+02:00", "-05:30"]),
)
good_lines = st.lists(
    st.fixed_dictionaries(
        {
            "sku": good_ids,
            "category": st.sampled_from(["shoes", "red shoes", "bags"]),
            "quantity": st.integers(1, 3),
            "unit_price": st.integers(0, 10_000),
        }
    ),
    max_size=3,
)
near_events = st.tuples(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["order_placed", "order_cancelled", "order_refunded"]),
            "customer_id": good_ids,
            "order_id": good_ids,
            "occurred_at": good_instants,
            "currency": st.sampled_from(["EUR", "USD"]),
            "total": st.integers(0, 10_000),
        },
        optional={
            "shop_id": st.sampled_from(["shop-nl", "default"]),
            "discount": st.integers(0, 100),
            "lines": good_lines,
            "refund_id": st.one_of(good_ids, st.none()),
        },
    ),
    st.sampled_from(
        [
            *("type", "customer_id", "order_id", "occurred_at", "shop_id", "currency"),
            *("total", "discount", "lines", "refund_id", None, None, None),
        ]
    ),
    st.one_of(ids, instants, amounts, lines, st.none()),
).map(lambda t: t[0] if t[1] is None else {**t[0], t[1]: t[2]})


def _validated(raw: dict[str, Any]) -> Any:
    try:
        return ORDER_EVENT.validate_python(raw, context={"received_at": RECEIVED})
    except ValidationError:
        return None


@settings(max_examples=2000, deadline=None)
@given(st.one_of(events, near_events))
@example(
    {
        "type": "order_placed",
        "customer_id": "c1",
        "order_id": "o1",
        "occurred_at": "2025-03-01T10:00:00.5+02:00",
        "currency": "EUR",
        "total": 100,
        "lines": [{"sku": "s", "category": "red shoes", "quantity": 2, "unit_price": 50}],
    }
)
def test_a_plain_event_is_what_validation_gives(raw: dict[str, Any]) -> None:
    plain = plain_order(raw, RECEIVED)
    validated = _validated(raw)
    if plain is None:
        return  # left to validation
    assert validated is not None, "the plain path took an event validation refuses"
    assert type(plain) is type(validated)
    assert plain == validated
    assert list(plain.__dict__) == list(validated.__dict__)
    assert plain.model_fields_set == validated.model_fields_set
    assert plain.occurred_at.tzinfo is validated.occurred_at.tzinfo
    assert plain.model_dump_json() == validated.model_dump_json()
    if isinstance(plain, OrderPlaced):
        for mine, theirs in zip(plain.lines, validated.lines, strict=True):
            assert mine.model_fields_set == theirs.model_fields_set


def _order(**fields: Any) -> dict[str, Any]:
    return {
        "type": "order_placed",
        "customer_id": "c1",
        "order_id": "o1",
        "occurred_at": "2025-03-01T10:00:00Z",
        "currency": "EUR",
        "total": 100,
        **fields,
    }


def test_the_plain_path_takes_the_events_webshops_write() -> None:
    event = plain_order(_order(discount=5, shop_id="shop-nl"), RECEIVED)
    assert event == _validated(_order(discount=5, shop_id="shop-nl"))
    assert event is not None and event.occurred_at == datetime(2025, 3, 1, 10, tzinfo=UTC)


def test_the_plain_path_leaves_the_rest_to_validation() -> None:
    later = (RECEIVED + timedelta(days=2)).isoformat()
    for raw in (
        _order(customer_id=" c1"),  # stripped by validation
        _order(occurred_at=later),  # too far ahead of the worker's clock
        _order(occurred_at="1989-12-31T23:59:59Z"),
        _order(occurred_at=datetime(2025, 3, 1, tzinfo=timezone(timedelta(hours=1))).timestamp()),
        _order(total=1.5),
        _order(currency="XXY"),
    ):
        assert plain_order(raw, RECEIVED) is None
