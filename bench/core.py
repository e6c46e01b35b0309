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


def run_core(records: Iterable[tuple[bytes, bytes]]) -> tuple[int, float]:
    """(records folded, seconds)."""
    rules = load_rules()
    models: dict[str, SegmentModel] = {}
    states: dict[str, CustomerState] = {}
    now = datetime.now(UTC)
    count = 0
    started = time.perf_counter()
    for key, value in records:
        count += 1
        order = decode_order(key, value, received_at=now)
        model = models.get(order.shop_id)
        if model is None:
            model = models[order.shop_id] = SegmentModel(
                rules, bootstrap_calibration(rules, order.shop_id)
            )
        customer = state_key(order.shop_id, order.customer_id)
        try:
            state, _transitions = apply_order(states.get(customer), order, model)
        except OrderRejected:
            continue
        due = next_due(state, model)
        if state.as_of is not None:
            current_metrics(state, model)
        encode_stored(0, state, due)
        states[customer] = state
    return count, time.perf_counter() - started
