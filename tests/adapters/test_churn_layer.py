"""Churn risk in the worker: the crossing instant scheduled beside the fold's due time (in the
index and in the table value, apart from the fold's own), ``became_likely_churned`` at the exact
crossing in event time and by the wall clock, moved back by the next order, re-judged by a
refit; nothing of it without a prediction model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from config.rules import load_rules
from models.bgnbd import BgNbdParams
from models.churn import crossing
from models.due import next_due
from models.predictions import PredictionModel
from streams.clock import tick
from streams.codecs import decode_header, decode_stored_due
from streams.dlq import SourceRecord
from streams.processor import Processor
from tests.adapters.fakes import Worker
from tests.factories import at, placed, prediction_model

RULES = load_rules()
THRESHOLD = RULES.predictions.churn_threshold_for("default")
KEY = "default/ann"


def _model(
    version: str = "p1", fitted: int = 1, a: float = 0.793, b: float = 2.426
) -> PredictionModel:
    return prediction_model(
        BgNbdParams(r=0.243, alpha=4.414, a=a, b=b),
        version=version,
        fitted_at=datetime(2026, 1, fitted, tzinfo=UTC),
    )


RISKY = _model(a=5.0)


class Feed:
    """Records of partition 0 of the orders (and clock) topic, with their offsets."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.offset = 0

    async def orders(self, *events: Any) -> None:
        records = []
        for event in events:
            value = orjson.dumps(event)
            records.append(
                SourceRecord(event["customer_id"].encode(), value, "orders", 0, self.offset)
            )
            self.offset += 1
        await self._run([(r, self.processor.on_order) for r in records])

    async def ticks(self, ticks: list[tuple[int, bytes]]) -> None:
        records = []
        for partition, value in ticks:
            records.append(SourceRecord(None, value, "clock", partition, self.offset))
            self.offset += 1
        await self._run([(r, self.processor.on_tick) for r in records])

    async def _run(self, items: Any) -> None:
        await self.processor.on_batch(items, lambda _i: None)
        await self.processor.drain()


def _churn(worker: Worker) -> list[dict[str, Any]]:
    sent = [orjson.loads(value or b"{}") for _topic, _key, value in worker.outbox.sent]
    return [r for r in sent if r.get("type") == "churn_risk_changed"]


def _history() -> list[Any]:
    return [placed("ann", "o1", 0), placed("ann", "o2", 14), placed("ann", "o3", 30)]


async def test_event_time_became_likely_churned_at_the_crossing_and_back_on_the_next_order() -> (
    None
):
    worker = Worker(rules=RULES)
    processor = worker.processor
    assert await processor.set_prediction_model(_model())
    feed = Feed(processor)
    await feed.orders(*_history())
    state = processor.handlers._load(KEY, 0)
    assert state is not None
    instant = crossing(state, _model(), THRESHOLD)
    assert instant is not None
    model = processor.models.model_for("default")
    fold_due = next_due(state, model)
    assert fold_due is not None and fold_due < instant  # inactive first, then the crossing
    # The table value: the fold's own due time as ``d``, the crossing apart as ``c``; the
    # header (what a restart indexes) the earlier of the two.
    stored = worker.table[KEY.encode()]
    assert orjson.loads(stored)["c"] == instant.isoformat()
    assert decode_stored_due(stored).due == fold_due
    header = decode_header(stored)
    assert header is not None and header.due == fold_due
    # Another customer's order on the partition moves event time past both instants.
    await feed.orders(placed("bob", "b1", (instant - at(0)) / timedelta(days=1) + 1))
    moves = _churn(worker)
    assert [(m["move"], m["cause"]["kind"]) for m in moves] == [("became_likely_churned", "time")]
    assert datetime.fromisoformat(moves[0]["event_time"]) == instant
    assert moves[0]["p_alive"] <= THRESHOLD
    assert moves[0]["model_version"] == "p1"
    after = processor.handlers._load(KEY, 0)
    assert after is not None and after.as_of == instant  # time passed to the crossing exactly
    assert after.segment == "inactive"  # the fold's own due time came first
    assert "c" not in orjson.loads(worker.table[KEY.encode()])  # nothing ahead any more
    # Her next order moves her back.
    await feed.orders(placed("ann", "o4", (instant - at(0)) / timedelta(days=1) + 2))
    moves = _churn(worker)
    assert [(m["move"], m["cause"]["kind"]) for m in moves] == [
        ("became_likely_churned", "time"),
        ("no_longer_likely_churned", "order_placed"),
    ]
    assert moves[1]["cause"]["order_id"] == "o4"
    assert moves[1]["p_alive"] > THRESHOLD


async def test_a_restart_indexes_the_crossing_from_the_header_without_taking_it_for_the_folds() -> (
    None
):
    worker = Worker(rules=RULES)
    processor = worker.processor
    assert await processor.set_prediction_model(RISKY)
    feed = Feed(processor)
    # A shop whose customers drop out more often: the crossing comes before the fold's due.
    await feed.orders(*_history(), placed("ann", "o4", 100))
    stored = worker.table[KEY.encode()]
    state = decode_stored_due(stored).state
    instant = crossing(state, RISKY, THRESHOLD)
    fold_due = decode_stored_due(stored).due
    assert instant is not None and fold_due is not None and instant < fold_due
    header = decode_header(stored)
    assert header is not None and header.due == instant
    # A restart: a new processor over the same table, the model read again from the topic.
    again = Worker(rules=RULES)
    again.table.update(worker.table)
    assert await again.processor.set_prediction_model(RISKY, replayed=True)
    assert again.processor.clock.pending_reevaluation == []  # replayed: nothing to re-judge
    await again.processor.rebuild_index()
    assert again.processor.clock.index.next_due() == instant
    # Loaded, the state keeps the fold's own due time (the stored crossing is not taken for it).
    loaded = again.processor.handlers._load(KEY, 0)
    assert loaded is not None
    assert next_due(loaded, again.processor.models.model_for("default")) == fold_due
    # Wall clock: a due tick within a second after the crossing; the move carries the crossing.
    await Feed(again.processor).ticks([(0, tick("due", KEY, instant + timedelta(seconds=0.7)))])
    moves = _churn(again)
    assert [(m["move"], datetime.fromisoformat(m["event_time"])) for m in moves] == [
        ("became_likely_churned", instant)
    ]
    after = again.processor.handlers._load(KEY, 0)
    assert after is not None and after.as_of == instant and after.segment == state.segment
    # The fold's turn next (the crossing's entry is stale now)
    assert again.processor.clock.index.pop_due(0, fold_due) == [(KEY, fold_due)]


async def test_a_refit_rejudges_the_shops_customers_with_cause_model_refit() -> None:
    worker = Worker(rules=RULES)
    processor = worker.processor
    feed = Feed(processor)
    await feed.orders(*_history(), placed("bob", "b1", 0), placed("bob", "b2", 200))
    assert _churn(worker) == []  # no model: no churn risk
    assert all("c" not in orjson.loads(v) for v in worker.table.values())
    # The first model: ann's crossing (her last order on day 30) lies before event time (day
    # 200): re-evaluated, she catches up with time to it.
    assert await processor.set_prediction_model(_model())
    assert sorted(k for _, k in processor.clock.pending_reevaluation) == [KEY, "default/bob"]
    await feed.ticks(processor.clock.reevaluation_ticks())
    moves = _churn(worker)
    assert [(m["customer_id"], m["move"], m["cause"]["kind"]) for m in moves] == [
        ("ann", "became_likely_churned", "model_refit")
    ]
    ann = processor.handlers._load(KEY, 0)
    assert ann is not None and ann.as_of == crossing(ann, _model(), THRESHOLD)
    assert datetime.fromisoformat(moves[0]["event_time"]) == ann.as_of
    # bob's crossing lies ahead: scheduled, and stored in his table value.
    bob = processor.handlers._load("default/bob", 0)
    bob_crossing = crossing(bob, _model(), THRESHOLD)
    assert bob_crossing is not None and bob is not None and bob_crossing > bob.as_of  # type: ignore[operator]
    assert orjson.loads(worker.table[b"default/bob"])["c"] == bob_crossing.isoformat()
    # The same model again changes nothing; a newer one under which ann is not at risk moves
    # her back.
    assert not await processor.set_prediction_model(_model())
    assert await processor.set_prediction_model(_model("p2", fitted=2, b=200.0))
    await feed.ticks(processor.clock.reevaluation_ticks())
    moves = _churn(worker)
    assert [
        (m["customer_id"], m["move"], m["cause"]["kind"], m["model_version"]) for m in moves[1:]
    ] == [("ann", "no_longer_likely_churned", "model_refit", "p2")]


def test_an_order_event_s_cause_names_its_order_and_only_a_refund_its_refund() -> None:
    from models.events import Cause
    from streams.churn_layer import order_cause
    from tests.factories import cancelled, model, refunded

    assert order_cause(model(placed("c", "o1", 1))) == Cause(kind="order_placed", order_id="o1")
    assert order_cause(model(cancelled("c", "o1", 2))) == Cause(
        kind="order_cancelled", order_id="o1"
    )
    assert order_cause(model(refunded("c", "o1", 3, 500, "r9"))) == Cause(
        kind="order_refunded", order_id="o1", refund_id="r9"
    )
