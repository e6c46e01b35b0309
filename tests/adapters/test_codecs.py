"""Decoding order records at the edge: every kind of bad input gets a reason, nothing crashes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import orjson
import pytest

from models.events import ERASURE_EVENT, ClockTick, OrderPlaced, erasure_receipt
from models.state import CustomerState
from streams.codecs import (
    MAX_ORDER_BYTES,
    DecodeError,
    Judged,
    decode_header,
    decode_order,
    decode_stored,
    decode_stored_due,
    decode_tick,
    encode_receipt,
    encode_stored,
    encode_tick,
    encode_transition,
)
from tests.factories import placed
from tests.unit.core import fold

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _reason(key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(DecodeError) as info:
        decode_order(key, value, NOW)
    return info.value.reason


def test_a_valid_order_decodes_with_money_in_minor_units() -> None:
    event = decode_order(b"c1", orjson.dumps(placed("c1", "o1", 0, total=1999, discount=1)), NOW)
    assert isinstance(event, OrderPlaced)
    assert (event.total, event.discount, event.currency) == (1999, 1, "EUR")
    assert event.lines[0].unit_price == 2000
    assert event.shop_id == "default"


def test_personal_data_on_the_event_is_dropped() -> None:
    raw = {**placed("c1", "o1", 0), "email": "a@example.com", "name": "A. Person"}
    event = decode_order(b"c1", orjson.dumps(raw), NOW)
    assert "email" not in event.model_dump() and "name" not in event.model_dump()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"total": -5}, "schema_violation"),
        ({"total": 12.5}, "schema_violation"),
        ({"total": "12"}, "schema_violation"),
        ({"total": 10**12}, "schema_violation"),
        ({"currency": "XXY"}, "schema_violation"),
        ({"currency": "eur"}, "schema_violation"),
        ({"occurred_at": "2025-01-01T00:00:00"}, "schema_violation"),  # no timezone
        ({"occurred_at": "1985-01-01T00:00:00Z"}, "schema_violation"),
        ({"occurred_at": (NOW + timedelta(days=3)).isoformat()}, "schema_violation"),
        ({"order_id": ""}, "schema_violation"),
        ({"customer_id": None}, "schema_violation"),
        ({"type": "order_teleported"}, "unknown_event_type"),
        (
            {"lines": [{"sku": "a", "category": "b", "quantity": -1, "unit_price": 1}]},
            "schema_violation",
        ),
    ],
)
def test_bad_fields_are_rejected_with_a_reason(change: dict, reason: str) -> None:  # type: ignore[type-arg]
    event = {**placed("c1", "o1", 0), **change}
    assert _reason(b"c1", orjson.dumps(event)) == reason


def test_bad_records_are_rejected_with_a_reason() -> None:
    good = orjson.dumps(placed("c1", "o1", 0))
    assert _reason(b"c1", b"{not json") == "malformed_json"
    assert _reason(b"c1", b"[1, 2]") == "malformed_json"
    assert _reason(b"c1", None) == "empty_value"
    assert _reason(b"c1", b" " * (MAX_ORDER_BYTES + 1)) == "too_large"
    assert _reason(None, good) == "missing_key"
    assert _reason(b"\xff\xfe", good) == "invalid_key"
    assert _reason(b"c2", good) == "key_mismatch"


def test_the_error_message_names_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        decode_order(b"c1", orjson.dumps({**placed("c1", "o1", 0), "total": -5}), NOW)
    assert "total" in str(info.value)


def test_stored_state_round_trips() -> None:
    state = CustomerState(shop_id="s", customer_id="c", segment="new", revision=3)
    stored = decode_stored(encode_stored(2, state))
    assert stored.partition == 2 and stored.state == state


def test_stored_state_of_an_unknown_schema_is_refused() -> None:
    raw = orjson.dumps({"p": 0, "s": {"schema_version": 99, "shop_id": "s", "customer_id": "c"}})
    with pytest.raises(ValueError, match="schema_version"):
        decode_stored(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", "c1\x1b[2J"),
        ("shop_id", "shop\u202egnp.exe"),
        ("order_id", "o1\nINFO fake log line"),
        ("category", "shoes\r"),  # inside: the whitespace around an id or a name is stripped
    ],
)
def test_an_id_with_a_control_character_is_dead_lettered_as_invalid_id(
    field: str, value: str
) -> None:
    event = placed("c1", "o1", 0)
    if field == "category":
        event["lines"][0]["category"] = f"{value}x"
    else:
        event[field] = value
    key = event["customer_id"].encode()
    with pytest.raises(DecodeError) as info:
        decode_order(key, orjson.dumps(event), NOW)
    assert info.value.reason == "invalid_id"
    assert field in str(info.value) and "control character U+" in str(info.value)
    assert not any(c in str(info.value) for c in "\x1b\u202e\n\r")  # the message is clean


def test_shop_ids_cannot_contain_key_separators() -> None:
    for shop in ("a/b", "a:b"):
        event = {**placed("c1", "o1", 0), "shop_id": shop}
        assert _reason(b"c1", orjson.dumps(event)) == "schema_violation"


def _real_state() -> CustomerState:
    from config.rules import load_rules
    from models.fold import apply_order
    from models.segment_model import SegmentModel, bootstrap_calibration

    rules = load_rules()
    model = SegmentModel(rules, bootstrap_calibration(rules, "default"))
    state = None
    for n, day in enumerate((0, 9, 20)):
        event = OrderPlaced.model_validate(placed("c1", f"o{n}", day, total=4000 + n))
        state, _ = apply_order(state, event, model)
    assert state is not None
    return state


def test_stored_header_gives_the_due_index_what_it_needs_without_the_state() -> None:
    state = _real_state()
    due = datetime(2025, 3, 1, 12, tzinfo=UTC)
    value = encode_stored(3, state, due)
    header = decode_header(value)
    assert header == (
        3,
        "default/c1",
        "default",
        due,
        state.as_of,
        state.rule_version,
        state.calibration_version,
        None,  # no prediction model judged it
    )
    assert decode_stored(value).state == state  # defaults left out on disk, restored on read
    assert decode_header(encode_stored(0, state, None)).due is None  # type: ignore[union-attr]


def test_the_churn_crossing_is_stored_apart_from_the_folds_due_time() -> None:
    state = _real_state()
    due = datetime(2025, 3, 1, 12, tzinfo=UTC)
    earlier, later = due - timedelta(days=3), due + timedelta(days=3)
    # without a crossing: the value of a worker without prediction models, byte for byte
    assert encode_stored(3, state, due, None) == encode_stored(3, state, due)
    assert b'"c"' not in encode_stored(3, state, due)
    for churn, indexed in ((earlier, earlier), (later, due)):
        value = encode_stored(3, state, due, churn)
        assert orjson.loads(value)["c"] == churn.isoformat()
        assert decode_header(value).due == indexed  # type: ignore[union-attr]
        assert decode_stored_due(value) == (3, state, due, True)  # the fold's own, known
    only = encode_stored(3, state, None, later)
    assert decode_header(only).due == later  # type: ignore[union-attr]
    assert decode_stored_due(only) == (3, state, None, True)


def test_the_churn_verdict_is_stored_with_the_model_it_was_judged_under() -> None:
    state = _real_state()
    due = datetime(2025, 3, 1, 12, tzinfo=UTC)
    for verdict in (Judged("p20260101T000000Z", True), Judged('odd "version"\n', False)):
        value = encode_stored(3, state, due, due, verdict)
        assert decode_header(value).judged == verdict  # type: ignore[union-attr]
        assert decode_stored_due(value) == (3, state, due, True)
    assert decode_header(encode_stored(3, state, due)).judged is None  # type: ignore[union-attr]


def test_values_written_before_the_header_are_still_read() -> None:
    state = _real_state()
    old = orjson.dumps({"p": 1, "s": state.model_dump(mode="json")})
    assert decode_header(old) is None
    assert decode_stored(old) == (1, state)
    assert decode_stored_due(old) == (1, state, None, False)  # no due time known: computed
    assert decode_stored_due(encode_stored(1, state, None)) == (1, state, None, True)
    other = orjson.loads(encode_stored(1, state, state.as_of))
    other["dv"] += 1  # computed by another version of next_due: computed again, not taken
    assert decode_stored_due(orjson.dumps(other)) == (1, state, state.as_of, False)
    assert len(encode_stored(1, state, None)) < len(old)  # the compact form is smaller


def test_a_value_as_written_reads_as_the_same_value_in_another_layout() -> None:
    """A value as ``encode_stored`` writes it is read straight from its bytes; the same value
    laid out otherwise (spaces, keys in another order) the general way: the same result."""
    state = _real_state()
    for partition, due in ((0, None), (7, state.as_of), (12, datetime(2025, 3, 1, tzinfo=UTC))):
        value = encode_stored(partition, state, due)
        raw = orjson.loads(value)
        other = json.dumps({"s": raw["s"], "dv": raw["dv"], "d": raw["d"], "p": raw["p"]})
        mine, general = decode_stored_due(value), decode_stored_due(other.encode())
        assert mine == general == (partition, state, due, True)
        assert mine.state.model_dump_json() == general.state.model_dump_json()
        assert encode_stored(partition, mine.state, mine.due) == value
    broken = encode_stored(0, state)[:-2] + b"}"  # the state cut short: refused as before
    with pytest.raises(ValueError):
        decode_stored_due(broken)


@pytest.mark.parametrize("backfill", [False, True])
def test_a_transition_is_its_json_then_emission_time_and_backfill_flag(backfill: bool) -> None:
    # a move with figures before and after, and tag changes (the discount hunter's tag)
    _, transitions = fold(
        [placed("kü-1", "o1", 0, total=5000), placed("kü-1", "o2", 20, total=900, discount=900)]
    )
    kinds = {t.type for t in transitions}
    assert kinds == {"segment_changed", "tag_changed"}
    assert any(t.type == "segment_changed" and t.metrics_before for t in transitions)
    emitted = NOW + timedelta(microseconds=123)
    for transition in transitions:
        expected = {
            **transition.model_dump(mode="json"),
            "emitted_at": emitted.isoformat(),
            "backfill": backfill,
        }
        encoded = encode_transition(transition, emitted, backfill)
        assert encoded == orjson.dumps(expected)  # the bytes, keys in this order


@pytest.mark.parametrize(
    ("customer", "request_id", "shop", "state_deleted", "cache_deleted"),
    [
        ("c1", "r-1", "default", True, True),
        ("kündin-1", "lösch-€-1", "bäckerei", False, False),
        ("顧客", "要求-1", "店", True, False),
    ],
)
def test_an_erasure_receipt_is_encoded_as_it_always_was(
    customer: str, request_id: str, shop: str, state_deleted: bool, cache_deleted: bool
) -> None:
    event = ERASURE_EVENT.validate_python(
        {
            "customer_id": customer,
            "shop_id": shop,
            "request_id": request_id,
            "occurred_at": "2025-05-31T23:59:59.5+02:00",
        }
    )
    completed_at = NOW + timedelta(microseconds=123)
    receipt = erasure_receipt(
        event,
        state_deleted=state_deleted,
        cache_deleted=cache_deleted,
        completed_at=completed_at,
        partition=3,
    )
    # the receipt as the worker built it before it had a model, and the partition it was for
    old = {
        "type": "erasure_completed",
        "request_id": event.request_id,
        "shop_id": event.shop_id,
        "requested_at": event.occurred_at.isoformat(),
        "completed_at": completed_at.isoformat(),
        "state_deleted": state_deleted,
        "cache_deleted": cache_deleted,
        "cache_deletion_pending": not cache_deleted,
        "partition": 3,
    }
    assert encode_receipt(receipt) == orjson.dumps(old)
    assert (
        orjson.loads(encode_receipt(receipt))["requested_at"] == "2025-05-31T21:59:59.500000+00:00"
    )


def _old_tick(kind: str, key: str, now: datetime | None) -> bytes:
    """The clock topic's record as the worker wrote it before it had a model."""
    return orjson.dumps({"kind": kind, "key": key, "now": now.isoformat() if now else None})


@pytest.mark.parametrize(
    ("kind", "key", "now"),
    [
        ("due", "default/ann", NOW),
        ("due", "bäckerei/kündin-1", NOW + timedelta(microseconds=7)),
        ("due", "店/顧客", datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))),
        ("reevaluate", "default/ann", None),
        ("reevaluate", "bäckerei/kündin-€", None),
    ],
)
def test_a_clock_tick_is_encoded_as_it_always_was_and_decodes_back(
    kind: Literal["due", "reevaluate"], key: str, now: datetime | None
) -> None:
    tick = ClockTick(kind=kind, key=key, now=now)
    encoded = encode_tick(tick)
    assert encoded == _old_tick(kind, key, now)
    decoded = decode_tick(encoded)
    assert decoded == tick
    assert (decoded.kind, decoded.key, decoded.now) == (kind, key, now)
    if now is not None:
        assert decoded.now is not None and decoded.now.utcoffset() == now.utcoffset()


def test_a_tick_without_a_kind_is_a_due_tick() -> None:
    tick = decode_tick(b'{"key":"default/ann","now":"2025-06-01T00:00:00+00:00"}')
    assert (tick.kind, tick.key, tick.now) == ("due", "default/ann", NOW)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_value"),
        (b"", "malformed_json"),
        (b"{not json", "malformed_json"),
        (b'["due", "default/ann"]', "malformed_json"),
        (b'{"kind":"soon","key":"default/ann","now":null}', "schema_violation"),
        (b'{"kind":"reevaluate","now":null}', "schema_violation"),
        (b'{"kind":"due","key":"default/ann","now":null}', "schema_violation"),
        (b'{"kind":"due","key":"default/ann"}', "schema_violation"),
        (b'{"kind":"due","key":"default/ann","now":"yesterday"}', "schema_violation"),
        (b'{"kind":"due","key":"default/ann","now":1748736000}', "schema_violation"),
        (b'{"kind":"reevaluate","key":7,"now":null}', "schema_violation"),
    ],
)
def test_a_bad_tick_is_refused_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_tick(value)
    assert info.value.reason == reason
