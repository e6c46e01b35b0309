"""The transition sink: transitions staged in an outbox while a batch is processed, sent
together when it ends (``flush``), or dropped when the batch is processed again (``discard``).

Every transition goes to the transitions topic; to the marketing topic of its type when the
routing (``models.routing``) says so. With the segment insights on, the activity records of
the batch (an applied order event, a segment move of another cause: ``models.insights``) are
held beside them, with their partitions, for the batch's commit to add up
(``take_activity``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from models.events import SegmentChanged, Transition
from models.insights import Activity
from models.routing import Routing
from models.state import CustomerState
from streams.codecs import encode_transition
from streams.insights.records import Order, move_activity, order_activity
from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# The most a record the worker writes (a transition, a customer's table value) may hold, key
# and value: the producer sends requests of up to 1,000,000 bytes and a broker with default
# limits takes batches of up to 1,048,588; headers and framing fit in what is left. A larger
# one would fail its batch at every attempt, so it is refused before it is staged, and the
# input that would have caused it is dead-lettered (``state_too_large``).
MAX_RECORD_BYTES = 900_000


class RecordTooLarge(ValueError):
    """A record the worker would write is larger than ``MAX_RECORD_BYTES``."""

    def __init__(self, what: str, size: int) -> None:
        super().__init__(
            f"{what} would be a record of {size} bytes, more than {MAX_RECORD_BYTES} bytes"
        )
        self.size = size


def check_size(what: str, key: bytes, value: bytes) -> None:
    """Raise ``RecordTooLarge`` if the record would be too large to send."""
    size = len(key) + len(value)
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(what, size)


class Outbox(Protocol):
    """Records held for the producer (``streams.framework.outbox.Outbox``)."""

    def add(self, topic: str, key: bytes, value: bytes | None) -> None: ...

    async def send(self) -> list[asyncio.Future[Any]]: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class Topics:
    """The transitions topic, and the marketing topic of each transition name that has one;
    whether the segment insights are kept (the activity records held for them)."""

    transitions: str
    marketing: Mapping[str, str]
    insights: bool = False


class TransitionSink:
    """Stages transitions in the outbox; ``flush`` sends what is staged."""

    def __init__(
        self, outbox: Outbox, topics: Topics, routing: Routing, metrics: WorkerMetrics
    ) -> None:
        self.outbox = outbox
        self.topics = topics
        self.routing = routing
        self.metrics = metrics
        # The activity records of what is staged, with the partition of their customer.
        self.activity: list[tuple[int, Activity]] = []

    def stage(self, transitions: list[Transition], partition: int, force: bool = False) -> datetime:
        """Hold transitions for the transitions topic and the marketing topics (``force``: to
        marketing whatever the backfill setting: an erasure must reach downstream); returns
        the emission time. ``partition``: their customer's. Raises ``RecordTooLarge`` (and
        stages nothing) if one of them would be too large to send."""
        emitted_at = datetime.now(UTC)
        debug = log.isEnabledFor(logging.DEBUG)
        route, topics = self.routing, self.topics
        metrics = self.metrics
        records = []
        for transition in transitions:  # all checked before any is staged
            key = transition.customer_id.encode()
            value = encode_transition(transition, emitted_at, route.backfill)
            check_size(f"transition {transition.event_id}", key, value)
            records.append((key, value))
        for transition, (key, value) in zip(transitions, records, strict=True):
            metrics.labelled(
                metrics.transitions, transition.transition, transition.cause.kind
            ).inc()
            if not route.backfill:
                delay = (emitted_at - transition.event_time).total_seconds()
                metrics.transition_delay.observe(max(delay, 0.0))
            self.outbox.add(topics.transitions, key, value)
            if debug:  # no log record is built per transition unless asked for
                log.debug(
                    "transition %s of %s",
                    transition.transition,
                    transition.customer_id,
                    extra={
                        "event_id": transition.event_id,
                        "shop_id": transition.shop_id,
                        "customer_id": transition.customer_id,
                        "transition": transition.transition,
                        "cause": transition.cause.kind,
                    },
                )
            if route.to_marketing(transition.transition, transition.cause.kind, force=force):
                self.outbox.add(topics.marketing[transition.transition], key, value)
            if topics.insights and isinstance(transition, SegmentChanged):
                move = move_activity(transition)  # None: its order event's record carries it
                if move is not None:
                    self.activity.append((partition, move))
        return emitted_at

    def stage_order(
        self, order: Order, before: CustomerState | None, after: CustomerState, partition: int
    ) -> None:
        """Hold the activity record of an applied order event (segment insights)."""
        if self.topics.insights:
            self.activity.append((partition, order_activity(order, before, after)))

    def take_activity(self) -> list[tuple[int, Activity]]:
        """The activity records held so far, in the order staged; held no more."""
        activity, self.activity = self.activity, []
        return activity

    async def flush(self) -> list[asyncio.Future[Any]]:
        """Send everything staged; the futures resolve once the broker has acknowledged it."""
        return await self.outbox.send()

    def discard(self) -> None:
        """Drop everything staged (its batch is processed again)."""
        self.outbox.clear()
        self.activity = []
