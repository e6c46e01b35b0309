"""Consent, erasure and pseudonyms in the pure core."""

from __future__ import annotations

from typing import Any

import pytest

from models.due import next_due
from models.events import CONSENT_EVENT, ERASURE_EVENT, erasure_receipt
from models.fold import apply_consent, erase
from models.privacy import erasure_marker, pseudonym, skipped_after_erasure
from models.segment_model import SegmentModel
from tests.factories import at, placed
from tests.unit.core import MODEL, fold, segment_moves

REQUIRED = SegmentModel(MODEL.rules, MODEL.calibration, consent_required=True)


def consent(customer: str, granted: bool, day: float) -> Any:
    kind = "consent_granted" if granted else "consent_withdrawn"
    return CONSENT_EVENT.validate_python(
        {"type": kind, "customer_id": customer, "occurred_at": at(day).isoformat()}
    )


def test_withdrawing_consent_leaves_every_segment_and_tag() -> None:
    state, _ = fold([placed("c1", "o1", 0, category="shoes"), placed("c1", "o2", 5)])
    assert state.segment == "potential_loyalist" and state.tags
    state, moves = apply_consent(state, consent("c1", False, 6), MODEL)
    assert segment_moves(moves) == [("potential_loyalist", None, "consent_withdrawn")]
    assert {(t.tag, t.change) for t in moves if t.type == "tag_changed"} == {
        (tag, "removed") for tag in ("full_price_buyer", "prefers_shoes")
    }
    assert state.segment is None and state.tags == () and next_due(state, MODEL) is None
    # orders without consent are recorded but segment nobody
    state, quiet = fold([placed("c1", "o3", 7)], state=state)
    assert quiet == [] and len(state.orders) == 3
    state, back = apply_consent(state, consent("c1", True, 8), MODEL)
    assert segment_moves(back) == [(None, "potential_loyalist", "consent_granted")]


def test_the_newest_consent_decision_wins_whatever_the_arrival_order() -> None:
    state, _ = fold([placed("c1", "o1", 0)])
    late_first, _ = apply_consent(state, consent("c1", False, 3), MODEL)
    late_first, ignored = apply_consent(late_first, consent("c1", True, 2), MODEL)
    assert ignored == [] and late_first.consent == "withdrawn"
    in_order, _ = apply_consent(state, consent("c1", True, 2), MODEL)
    in_order, _ = apply_consent(in_order, consent("c1", False, 3), MODEL)
    assert in_order.consent == late_first.consent == "withdrawn"
    again, none = apply_consent(in_order, consent("c1", False, 3), MODEL)
    assert none == [] and again == in_order  # redelivered


def test_when_consent_is_required_nobody_is_segmented_without_a_record() -> None:
    state, moves = fold([placed("c1", "o1", 0)], segment_model=REQUIRED)
    assert moves == [] and state.segment is None
    state, granted = apply_consent(state, consent("c1", True, 1), REQUIRED)
    assert segment_moves(granted) == [(None, "new", "consent_granted")]


def test_erasure_tells_downstream_the_customer_left_everything() -> None:
    state, _ = fold([placed("c1", "o1", 0), placed("c1", "o2", 5)])
    request = ERASURE_EVENT.validate_python(
        {"customer_id": "c1", "request_id": "r-1", "occurred_at": at(9).isoformat()}
    )
    moves = erase(state, request, MODEL)
    assert segment_moves(moves) == [("potential_loyalist", None, "erasure")]
    assert {t.change for t in moves if t.type == "tag_changed"} == {"removed"}


@pytest.mark.parametrize(
    ("state_deleted", "cache_deleted"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_an_erasure_receipt_says_what_was_deleted(state_deleted: bool, cache_deleted: bool) -> None:
    request = ERASURE_EVENT.validate_python(
        {
            "customer_id": "c1",
            "shop_id": "s1",
            "request_id": "r-1",
            "occurred_at": at(9).isoformat(),
        }
    )
    receipt = erasure_receipt(
        request, state_deleted=state_deleted, cache_deleted=cache_deleted, completed_at=at(10)
    )
    assert receipt.model_dump() == {
        "type": "erasure_completed",
        "request_id": "r-1",
        "shop_id": "s1",
        "requested_at": at(9),
        "completed_at": at(10),
        "state_deleted": state_deleted,
        "cache_deleted": cache_deleted,
        "cache_deletion_pending": not cache_deleted,
        "partition": None,
    }
    assert "c1" not in receipt.model_dump_json()  # the receipt names the request, not the customer


def test_pseudonyms_are_keyed_stable_and_per_shop() -> None:
    a = pseudonym(b"secret", "shop", "c1")
    assert a == pseudonym(b"secret", "shop", "c1") and a.startswith("p-") and len(a) == 34
    assert a != pseudonym(b"other", "shop", "c1")
    assert a != pseudonym(b"secret", "shop2", "c1")
    assert "c1" not in erasure_marker(None, "shop", "c1")
    assert erasure_marker(b"k", "shop", "c1") != erasure_marker(None, "shop", "c1")


ORDER_TYPES = ("order_placed", "order_cancelled", "order_refunded")


@pytest.mark.parametrize(
    ("has_state", "erased", "event_type", "skipped"),
    [
        # an erased customer's orders and withdrawals are not stored
        *((False, True, kind, True) for kind in ORDER_TYPES),
        (False, True, "consent_withdrawn", True),
        # consent granted again starts a fresh state
        (False, True, "consent_granted", False),
        # not erased: everything is stored
        *((False, False, kind, False) for kind in (*ORDER_TYPES, "consent_withdrawn")),
        (False, False, "consent_granted", False),
        # a state (back by consent since, or never erased): everything is applied
        *((True, erased, kind, False) for erased in (False, True) for kind in ORDER_TYPES),
        (True, True, "consent_withdrawn", False),
        (True, True, "consent_granted", False),
    ],
)
def test_an_erased_customer_comes_back_only_by_consent(
    has_state: bool, erased: bool, event_type: str, skipped: bool
) -> None:
    state = fold([placed("c1", "o1", 0)])[0] if has_state else None
    assert skipped_after_erasure(state, erased, event_type) is skipped
