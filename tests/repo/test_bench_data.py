"""The benchmark's order stream is realistic and usable: valid, time-ordered, power-law."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson

from bench.data import StreamSpec, order_stream
from streams.codecs import decode_order


def test_stream_is_valid_time_ordered_and_power_law() -> None:
    spec = StreamSpec(customers=5000, seed=7)
    records = list(order_stream(spec))
    now = datetime.now(UTC)
    events = [decode_order(key, value, received_at=now) for key, value in records]
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
    assert all(spec.start <= t for t in times)
    placed = Counter(e.customer_id for e in events if e.type == "order_placed")
    assert len(placed) == spec.customers
    counts = sorted(placed.values())
    # most customers buy once or twice, a few very often
    assert counts[len(counts) // 2] <= 2
    assert counts[-1] >= 20
    assert 1.3 < sum(counts) / len(counts) < 3.0
    kinds = Counter(e.type for e in events)
    assert kinds["order_cancelled"] > 0 and kinds["order_refunded"] > 0
    assert len({e.shop_id for e in events}) == 4
    # deterministic for a seed
    assert [orjson.loads(v)["order_id"] for _, v in records[:50]] == [
        orjson.loads(v)["order_id"] for _, v in list(order_stream(spec))[:50]
    ]
