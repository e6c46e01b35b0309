"""Ids and names on events are printed for marketers and operators: control characters (escape
sequences, line breaks, text reordering) are refused, everything else printable is kept."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models.events import (
    CONSENT_EVENT,
    CONTROL_CHARACTER,
    ERASURE_EVENT,
    ORDER_EVENT,
    control_character,
)
from tests.factories import placed

CONTROLS = ["\x1b[31m", "\n", "\r", "\x00", "\x08", "\x7f", "\x85", "\u2028", "\u202e", "\u2066"]


def _errors(adapter: Any, event: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationError) as refused:
        adapter.validate_python(event)
    return refused.value.errors()


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize(
    "field", ["customer_id", "shop_id", "order_id", "refund_id", "sku", "category"]
)
def test_an_order_event_with_a_control_character_in_an_id_or_name_is_refused(
    field: str, control: str
) -> None:
    event = {**placed("c1", "o1", 0), "type": "order_refunded"}
    text = f"x{control}y"
    if field in ("sku", "category"):
        event["lines"] = [{**event["lines"][0], field: text}]
        event["type"] = "order_placed"
    else:
        event[field] = text
    errors = _errors(ORDER_EVENT, event)
    assert [e["type"] for e in errors] == [CONTROL_CHARACTER]
    assert errors[0]["loc"][-1] == field
    assert errors[0]["msg"] == f"contains the control character U+{ord(control[0]):04X}"


def test_consent_and_erasure_ids_are_held_to_the_same_rule() -> None:
    base = {"customer_id": "c1", "occurred_at": "2025-01-01T00:00:00Z"}
    consent = {**base, "type": "consent_granted", "customer_id": "c1\x1b]0;pwned\x07"}
    erasure = {**base, "type": "erasure_requested", "request_id": "r\n1"}
    assert [e["type"] for e in _errors(CONSENT_EVENT, consent)] == [CONTROL_CHARACTER]
    assert [e["type"] for e in _errors(ERASURE_EVENT, erasure)] == [CONTROL_CHARACTER]


def test_printable_text_of_any_script_is_kept_and_surrounding_whitespace_stripped() -> None:
    event = {
        **placed(" kunde-ü-🙂\n", "bestellung-αβγ", 0, category="Schuhe & Stiefel"),
        "shop_id": "shöp",
    }
    order = ORDER_EVENT.validate_python(event)
    assert (order.customer_id, order.order_id, order.shop_id) == (
        "kunde-ü-🙂",
        "bestellung-αβγ",
        "shöp",
    )
    assert order.lines[0].category == "Schuhe & Stiefel"  # type: ignore[union-attr]


def test_whitespace_inside_an_id_is_still_a_schema_violation() -> None:
    errors = _errors(ORDER_EVENT, {**placed("c1", "o 1", 0)})
    assert [e["type"] for e in errors] == ["string_pattern_mismatch"]


def test_control_character_finds_the_first() -> None:
    assert control_character("plain text, ünïcode, 🙂") is None
    assert control_character("a\u202eb\x1b") == "\u202e"
