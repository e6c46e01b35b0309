"""The activity records (``models.insights.Activity``) of a worker's order events and segment
moves."""

from __future__ import annotations

from models.events import OrderCancelled, OrderPlaced, OrderRefunded, SegmentChanged
from models.insights import Activity, order_activity_id
from models.state import CustomerState

Order = OrderPlaced | OrderCancelled | OrderRefunded


ORDER_CAUSES = frozenset({"order_placed", "order_cancelled", "order_refunded"})


def move_activity(transition: SegmentChanged) -> Activity | None:
    """The activity record of a segment move not caused by an order event (whose own record
    carries it): its id is the transition's."""
    if transition.cause.kind in ORDER_CAUSES:
        return None
    return Activity(
        id=transition.event_id,
        kind="move",
        shop_id=transition.shop_id,
        customer_id=transition.customer_id,
        at=transition.event_time,
        from_segment=transition.from_segment,
        to_segment=transition.to_segment,
        cause=transition.cause.kind,
    )


def order_activity(order: Order, before: CustomerState | None, after: CustomerState) -> Activity:
    """The activity record of an order event the worker applied (``before``: the customer's
    state it was applied to), with the segments before and after it. The revenue it changes:
    a placed order's net total (none, and not counted, for one cancelled or refunded before it
    arrived), a refund's amount, a cancelled order's net total."""
    counted = True
    if isinstance(order, OrderRefunded):
        amount, event_key = order.total, f"{order.order_id}/{order.refund_key}"
    elif isinstance(order, OrderPlaced):
        placed = after.orders.get(order.order_id)
        counted = placed is not None and placed.counts  # not: cancelled before it arrived
        amount = placed.net_total if placed is not None and counted else 0
        event_key = order.order_id
    else:
        record = before.orders.get(order.order_id) if before is not None else None
        was_counted = record is not None and record.placed_at is not None and not record.cancelled
        amount, event_key = (record.net_total if was_counted and record else 0), order.order_id
    return Activity(
        id=order_activity_id(order.shop_id, order.customer_id, order.type, event_key),
        kind="order",
        shop_id=order.shop_id,
        customer_id=order.customer_id,
        at=after.as_of or order.occurred_at,
        order_type=order.type,
        order_id=order.order_id,
        segment_before=before.segment if before is not None else None,
        segment_after=after.segment,
        amount=amount,
        currency=after.currency,
        counted=counted,
    )
