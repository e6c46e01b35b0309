"""The product's own work alone: the fold of the same records, in process, with no Kafka, no
Redis and no table store.

Decode and validate each order, apply it to the customer's state with the shop's rules
(segment, tags, transitions), compute the due time and the figures Redis would get, and encode
the state as the table stores it. Whatever consumes the orders, a worker cannot be faster than
this on the same machine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from bench.data import StreamSpec, order_stream
from config.rules import load_rules
from models.state import CustomerState, state_key
from models.transitions import (
    OrderRejected,
    SegmentModel,
    apply_order,
    bootstrap_calibration,
    current_metrics,
    next_due,
)
from streams.codecs import decode_order, encode_stored


def fold_prefix(customers: int, count: int) -> tuple[int, float]:
    """The first ``count`` records of the generated stream of ``customers``, generated first
    and then folded: (records folded, seconds of the fold). Run in a process of its own (the
    states it leaves behind would slow the next phases' collector in the bench's process)."""
    records = list(itertools.islice(order_stream(StreamSpec(customers=customers)), count))
    return run_core(records)


class Fold:
    """Orders applied to their customers' states, each shop under the rule file's bootstrap
    calibration; an order the state rejects is skipped."""

    def __init__(self) -> None:
        self.rules = load_rules()
        self.models: dict[str, SegmentModel] = {}
        self.states: dict[str, CustomerState] = {}
        self.now = datetime.now(UTC)

    def apply(self, key: bytes, value: bytes) -> tuple[CustomerState, SegmentModel] | None:
        """The customer's new state and their shop's model (None: the order was rejected)."""
        order = decode_order(key, value, received_at=self.now)
        model = self.models.get(order.shop_id)
        if model is None:
            model = self.models[order.shop_id] = SegmentModel(
                self.rules, bootstrap_calibration(self.rules, order.shop_id)
            )
        customer = state_key(order.shop_id, order.customer_id)
        try:
            state, _transitions = apply_order(self.states.get(customer), order, model)
        except OrderRejected:
            return None
        self.states[customer] = state
        return state, model


def run_core(records: Iterable[tuple[bytes, bytes]]) -> tuple[int, float]:
    """(records folded, seconds)."""
    fold = Fold()
    count = 0
    started = time.perf_counter()
    for key, value in records:
        count += 1
        folded = fold.apply(key, value)
        if folded is None:
            continue
        state, model = folded
        due = next_due(state, model)
        current_metrics(state, model)
        encode_stored(0, state, due)
    return count, time.perf_counter() - started
