"""The folds: apply an order event to a customer's state, and let time pass.

Both are pure: ``(state, input, rules) -> (new state, transitions)``. They never read the system
clock; time-caused transitions happen at the instant given by the caller. Together they give:

- idempotency: an event already reflected in the state changes nothing (no revision bump);
- order independence: the stored records are the same whatever order events arrive in;
- deterministic transition ids: the same input yields the same ``event_id``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Final

from models.events import (
    Cause,
    OrderCancelled,
    OrderPlaced,
    OrderRefunded,
    SegmentChanged,
    transition_name,
)
from models.rules import SegmentRules, decide
from models.state import CustomerState, OrderRecord, compute_metrics

OrderEventT = OrderPlaced | OrderCancelled | OrderRefunded

TRANSITION_NAMESPACE: Final = uuid.UUID("6f1c2d8e-4b0a-5a51-9d7e-3c2f1a0b9e47")
# A due time can at most move a customer into "inactive"; the bound only guards against a
# rule set that would keep producing due times.
_MAX_TIME_STEPS: Final = 8


class OrderRejected(ValueError):
    """An order event that is well-formed but cannot be applied to this customer's state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def apply_order(
    state: CustomerState | None, event: OrderEventT, rules: SegmentRules
) -> tuple[CustomerState, list[SegmentChanged]]:
    """Fold one order event into the state; returns the new state and the transitions."""
    if state is None:
        state = CustomerState(shop_id=event.shop_id, customer_id=event.customer_id)
    state, fired = due_transitions(state, event.occurred_at, rules)
    recorded = _record(state, event)
    if recorded is None:  # already applied: a redelivery or a duplicate from the webshop
        return state, fired
    at = max(state.as_of, event.occurred_at) if state.as_of else event.occurred_at
    updated = recorded.model_copy(update={"as_of": at, "revision": state.revision + 1})
    cause = Cause(kind=event.type, order_id=event.order_id)
    new_state, changed = _resegment(state, updated, at, cause, rules)
    return new_state, fired + changed


def due_transitions(
    state: CustomerState, now: datetime, rules: SegmentRules
) -> tuple[CustomerState, list[SegmentChanged]]:
    """The transitions time causes up to ``now``, each stamped with its exact due time."""
    fired: list[SegmentChanged] = []
    for _ in range(_MAX_TIME_STEPS):
        due = next_due(state, rules)
        if due is None or due > now:
            break
        at = max(due, state.as_of) if state.as_of else due
        updated = state.model_copy(update={"as_of": at, "revision": state.revision + 1})
        state, changed = _resegment(state, updated, at, Cause(kind="time"), rules)
        if not changed:
            break
        fired += changed
    return state, fired


def next_due(state: CustomerState, rules: SegmentRules) -> datetime | None:
    """The instant the customer changes segment if no further order arrives (None: never)."""
    if state.segment is None or state.as_of is None:
        return None
    m = compute_metrics(state, state.as_of, rules)
    if m.last_order_at is None or m.inactive_after_days is None:
        return None
    due = m.last_order_at + timedelta(days=m.inactive_after_days)
    return due if decide(compute_metrics(state, due, rules), rules) != state.segment else None


def transition_id(
    state: CustomerState, to_segment: str | None, cause: Cause, at: datetime, rules: SegmentRules
) -> str:
    """A stable id: the same customer, move, cause, instant and rule version give the same id."""
    parts = (
        state.shop_id,
        state.customer_id,
        str(state.segment),
        str(to_segment),
        cause.kind,
        cause.order_id or "",
        at.isoformat(),
        rules.version,
    )
    return str(uuid.uuid5(TRANSITION_NAMESPACE, "\x1f".join(parts)))


def _resegment(
    before: CustomerState,
    after: CustomerState,
    at: datetime,
    cause: Cause,
    rules: SegmentRules,
) -> tuple[CustomerState, list[SegmentChanged]]:
    metrics_after = compute_metrics(after, at, rules)
    segment = decide(metrics_after, rules)
    if segment == before.segment:
        return after, []
    event = SegmentChanged(
        event_id=transition_id(before, segment, cause, at, rules),
        shop_id=before.shop_id,
        customer_id=before.customer_id,
        from_segment=before.segment,
        to_segment=segment,
        transition=transition_name(segment),
        cause=cause,
        event_time=at,
        metrics_before=compute_metrics(before, at, rules) if before.segment else None,
        metrics_after=metrics_after,
        rule_version=rules.version,
    )
    return after.model_copy(update={"segment": segment, "segment_since": at}), [event]


def _record(state: CustomerState, event: OrderEventT) -> CustomerState | None:
    """The state with the event's contribution recorded, or None if it is already there."""
    record = state.orders.get(event.order_id, OrderRecord())
    currency = state.currency
    if isinstance(event, OrderPlaced):
        if record.placed_at is not None:
            return None
        currency = _check_currency(state, event.currency)
        categories: dict[str, int] = {}
        for line in event.lines:
            categories[line.category] = (
                categories.get(line.category, 0) + line.quantity * line.unit_price
            )
        record = record.model_copy(
            update={
                "placed_at": event.occurred_at,
                "total": event.total,
                "discount": event.discount,
                "categories": categories,
            }
        )
    elif isinstance(event, OrderCancelled):
        if record.cancelled:
            return None
        record = record.model_copy(update={"cancelled": True})
    else:
        if event.refund_key in record.refunds:
            return None
        currency = _check_currency(state, event.currency)
        record = record.model_copy(
            update={"refunds": {**record.refunds, event.refund_key: event.total}}
        )
    return state.model_copy(
        update={"currency": currency, "orders": {**state.orders, event.order_id: record}}
    )


def _check_currency(state: CustomerState, currency: str) -> str:
    if state.currency is not None and state.currency != currency:
        raise OrderRejected(
            "currency_mismatch",
            f"customer {state.customer_id} buys in {state.currency}, event is in {currency}",
        )
    return currency
