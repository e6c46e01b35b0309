"""``python -m bench.digest``: one digest of everything the fold decides and writes for fixed
streams, to check that a change meant to make it faster changes none of it.

Run it on two commits and compare the lines: the same digest means the same stored states
(with their due times), the same Redis figures and the same transitions (ids, causes, figures,
in order), after the orders, then after time passes for every customer, and instead after a
recalibration of every shop. Not a test of correctness: a digest that changes says that
something did, and the tests say whether it should have.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import click

from bench.core import Fold
from bench.data import StreamSpec, order_stream
from config.rules import load_rules
from models.due import next_due
from models.fold import OrderRejected, due_transitions, reevaluate
from models.rules import SegmentRules
from models.scoring import Calibration, Cutoffs
from models.segment_model import SegmentModel, current_metrics
from streams.codecs import decode_stored_due, encode_stored, encode_transition
from streams.handlers import load_stored

RECEIVED = datetime(2026, 6, 1, tzinfo=UTC)
EMITTED = datetime(2026, 6, 1, 12, tzinfo=UTC)
# Quantile-style cut-offs unlike the rule file's: most customers move or keep a score by the
# hysteresis margin.
RECALIBRATED = Cutoffs(
    recency_days=(20, 60, 120, 240), frequency=(1, 2, 3, 5), monetary=(2000, 5000, 9000, 20000)
)


@dataclass
class Digest:
    """What was folded, hashed in the order it happened, and counted."""

    rules: SegmentRules = field(default_factory=load_rules)
    hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, data: bytes) -> None:
        self.hash.update(kind.encode() + b"\0" + data + b"\0")
        self.counts[kind] += 1

    def fold(self, spec: StreamSpec, orders: int) -> None:
        core = Fold(self.rules, RECEIVED)
        models, store = core.models, core.store
        for key, value in itertools.islice(order_stream(spec), orders):
            try:
                state, transitions = core.step(key, value)
            except OrderRejected as exc:
                self.add("rejected", exc.reason.encode())
                continue
            self._transitions("order", transitions)
            self.add(
                "figures", current_metrics(state, models[state.shop_id]).model_dump_json().encode()
            )
            self.add("state", store[state.key])
        later = RECEIVED + timedelta(days=400)  # every due time passes
        for value in store.values():
            state = load_stored(value, models.__getitem__)
            model = models[state.shop_id]
            state, transitions = due_transitions(state, later, model)
            self._transitions("time", transitions)
            self.add("state", encode_stored(0, state, next_due(state, model)))
        # a recalibration of the states as the orders left them
        for shop in models:
            calibration = Calibration(
                shop_id=shop, version="digest", method="quantile", cutoffs=RECALIBRATED
            )
            models[shop] = SegmentModel(self.rules, calibration)
        for value in store.values():
            state = decode_stored_due(value).state
            model = models[state.shop_id]
            state, transitions = reevaluate(state, model, RECEIVED + timedelta(days=30))
            self._transitions("recalibration", transitions)
            self.add("state", encode_stored(0, state, next_due(state, model)))
            if state.as_of is not None:
                self.add("figures", current_metrics(state, model).model_dump_json().encode())

    def _transitions(self, cause: str, transitions: list) -> None:  # type: ignore[type-arg]
        for transition in transitions:
            self.add(f"transition/{cause}", encode_transition(transition, EMITTED, False))


@click.command()
@click.option("--orders", default=40_000, show_default=True, help="orders of each stream")
def cli(orders: int) -> None:
    """Print the digest of the fold over two fixed streams: a few thousand customers with
    many orders each, and the first orders of a million customers."""
    digest = Digest()
    started = time.perf_counter()
    digest.fold(StreamSpec(customers=3000), orders)
    digest.fold(StreamSpec(customers=1_000_000, seed=7), orders)
    click.echo(digest.hash.hexdigest())
    for kind, count in sorted(digest.counts.items()):
        click.echo(f"  {kind}: {count:,}")
    click.echo(f"  ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    cli()
