"""The peer a user would pick: the segmentation job as a straightforward Quix Streams app.

Per-customer state in Quix's RocksDB store (with its changelog topic), a set of seen order ids
against duplicates, order count, net spend, first and last order; fixed cut-offs and a
six-segment first-match map; a transition record to an output topic on every segment change;
each customer's segment and scores written to Redis with Quix's ``RedisSink``; Quix's
defaults otherwise. It does less than the product (no time-caused moves, tags, calibrations,
hysteresis, consent, erasure or deterministic ids): a floor to beat, not an equal.

Quix Streams pins pydantic below the product's, so the benchmark runs this file as a script
in an environment of its own (``bench.peers``); it imports nothing of the product::

    python bench/quix_peer.py BOOTSTRAP TOPIC OUT_TOPIC EXPECTED STATE_DIR REDIS_PORT PREFIX RESULT

It writes ``{"records": n, "seconds": s}`` (from the first record until the app has stopped
and committed, its outputs flushed) to RESULT and exits.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from quixstreams import Application, State
from quixstreams.sinks.community.redis import RedisSink

# Fixed cut-offs: a score is 1 + the number of cut-offs a value reaches (recency: stays under).
RECENCY_DAYS = (30, 90, 180, 365)
FREQUENCY = (2, 3, 5, 8)
MONETARY = (5_000, 15_000, 40_000, 100_000)


def _score(value: float, cuts: tuple[float, ...]) -> int:
    return 1 + sum(value >= cut for cut in cuts)


def _segment(r: int, f: int, m: int, count: int) -> str:
    """A six-segment first-match map."""
    if count == 1:
        return "new"
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if f >= 3 and r >= 3:
        return "loyal"
    if m >= 4:
        return "big_spenders"
    if r <= 2:
        return "at_risk"
    return "promising"


class Job:
    """The fold and the stop condition: the app stops once ``expected`` records are in."""

    def __init__(self, app: Application, expected: int) -> None:
        self.app = app
        self.expected = expected
        self.seen = 0
        self.started: float | None = None

    def fold(self, order: dict[str, Any], state: State) -> dict[str, Any]:
        if self.started is None:
            self.started = time.perf_counter()
        self.seen += 1
        if self.seen >= self.expected:
            self.app.stop()
        at = datetime.fromisoformat(order["occurred_at"])
        kind = order.get("type")
        # one value per customer: its order totals by id (the seen ids), count, net spend,
        # first and last order, segment
        c = state.get("customer") or {"totals": {}, "count": 0, "spend": 0}
        totals: dict[str, int] = c["totals"]
        previous = c.get("last")
        order_id = order["order_id"]
        if kind == "order_placed" and order_id not in totals:
            totals[order_id] = order["total"]
            c["count"] += 1
            c["spend"] += order["total"]
            c["first"] = c.get("first") or order["occurred_at"]
            c["last"] = max(previous or order["occurred_at"], order["occurred_at"])
        elif kind == "order_cancelled" and totals.get(order_id, -1) >= 0:
            c["count"] -= 1
            c["spend"] -= totals[order_id]
            totals[order_id] = -1  # seen, and cancelled
        elif kind == "order_refunded" and totals.get(order_id, -1) >= 0:
            c["spend"] -= order["total"]
        count, spend = c["count"], c["spend"]
        recency = (
            (at - datetime.fromisoformat(previous)).total_seconds() / 86400 if previous else 0.0
        )
        r = 5 - _score(recency, RECENCY_DAYS) + 1
        f, m = _score(count, FREQUENCY), _score(spend, MONETARY)
        segment = _segment(r, f, m, count) if count else None
        before = c.get("segment")
        c["segment"] = segment
        state.set("customer", c)
        transition = None
        if segment != before:
            transition = {
                "event_id": str(uuid.uuid4()),
                "customer_id": order["customer_id"],
                "from_segment": before,
                "to_segment": segment,
                "order_id": order_id,
                "at": order["occurred_at"],
            }
        return {
            "redis": {"segment": segment, "r": r, "f": f, "m": m, "orders": count, "spend": spend},
            "transition": transition,
        }


def main(argv: list[str]) -> None:
    bootstrap, topic, out_topic, expected, state_dir, redis_port, prefix, result = argv
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"{prefix}-quix",
        auto_offset_reset="earliest",
        state_dir=state_dir,
    )
    job = Job(app, int(expected))
    orders = app.topic(topic, value_deserializer="json")
    transitions = app.topic(out_topic, value_serializer="json")
    sdf = app.dataframe(orders).apply(job.fold, stateful=True)
    sdf[sdf["transition"].notnull()].apply(lambda v: v["transition"]).to_topic(transitions)
    sdf.apply(lambda v: v["redis"]).sink(
        RedisSink(
            host="127.0.0.1",
            port=int(redis_port),
            db=0,
            value_serializer=json.dumps,
            key_serializer=lambda key, value: f"{prefix}:{key.decode()}",
        )
    )
    app.run()
    assert job.started is not None
    seconds = time.perf_counter() - job.started
    Path(result).write_text(json.dumps({"records": job.seen, "seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
