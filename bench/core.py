"""The product's own work alone: the fold of the same records, in process, with no Kafka, no
Redis and no table store.

Decode and validate each order, read the customer's state as the table stores it, apply the
order with the shop's rules (segment, tags, transitions), compute the due time and the figures
Redis would get, and encode the state again. Whatever consumes the orders, a worker cannot be
faster than this on the same machine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from bench.data import StreamSpec, order_stream
from config.rules import load_rules
from models.due import next_due
from models.events import Transition
from models.fold import OrderRejected, apply_order
from models.rules import SegmentRules
from models.segment_model import SegmentModel, bootstrap_calibration, current_metrics
from models.state import CustomerState, state_key
from streams.codecs import decode_order, decode_stored, encode_stored
from streams.handlers import load_stored
from streams.worker import tune_collector


def fold_prefix(customers: int, count: int) -> tuple[int, float]:
    """The first ``count`` records of the generated stream of ``customers``, generated first
    and then folded, with the garbage collector set as in a worker: (records folded, seconds
    of the fold). Run in a process of its own (the states it leaves behind would slow the next
    phases' collector in the bench's process)."""
    records = list(itertools.islice(order_stream(StreamSpec(customers=customers)), count))
    tune_collector()  # as a worker runs
    return run_core(records)


class Fold:
    """Orders applied to their customers' states, each shop under the rule file's bootstrap
    calibration; an order the state rejects is skipped. The states are kept as a worker's
    table keeps them: encoded, read back (``decode_stored``) for every order."""

    def __init__(
        self, rules: SegmentRules | None = None, received_at: datetime | None = None
    ) -> None:
        self.rules = rules or load_rules()
        self.models: dict[str, SegmentModel] = {}
        self.store: dict[str, bytes] = {}
        self.now = received_at or datetime.now(UTC)

    def apply(self, key: bytes, value: bytes) -> bool:
        """``step``; False: the order was rejected."""
        try:
            self.step(key, value)
        except OrderRejected:
            return False
        return True

    def step(self, key: bytes, value: bytes) -> tuple[CustomerState, list[Transition]]:
        """Fold one record as a worker does: decode the order, read the customer's state,
        apply the order, compute the due time and the figures Redis would get, and store the
        state. Returns the new state and its transitions; raises ``OrderRejected``."""
        order = decode_order(key, value, received_at=self.now)
        model = self.models.get(order.shop_id)
        if model is None:
            model = self.models[order.shop_id] = SegmentModel(
                self.rules, bootstrap_calibration(self.rules, order.shop_id)
            )
        customer = state_key(order.shop_id, order.customer_id)
        stored = self.store.get(customer)
        state = None if stored is None else load_stored(stored, self.models.__getitem__)
        state, transitions = apply_order(state, order, model)
        due = next_due(state, model)
        current_metrics(state, model)
        self.store[customer] = encode_stored(0, state, due)
        return state, transitions

    def states(self) -> list[CustomerState]:
        return [decode_stored(value).state for value in self.store.values()]


def run_core(records: Iterable[tuple[bytes, bytes]]) -> tuple[int, float]:
    """(records folded, seconds)."""
    fold = Fold()
    count = 0
    started = time.perf_counter()
    for key, value in records:
        count += 1
        fold.apply(key, value)
    return count, time.perf_counter() - started
