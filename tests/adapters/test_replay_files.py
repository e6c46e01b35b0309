"""Reading replay files: JSON lines as they are, CSV rows grouped into events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from streams.cli.replay import ReplayError, read_records
from streams.codecs import decode_order

HEADER = "type,order_id,customer_id,shop_id,occurred_at,currency,total,discount,"
CSV = (
    HEADER
    + """sku,category,quantity,unit_price
order_placed,o1,c1,,2025-01-01T10:00:00Z,EUR,4500,500,S-1,shoes,1,4000
order_placed,o1,c1,,2025-01-01T10:00:00Z,EUR,4500,500,B-2,bags,2,500
order_cancelled,o1,c1,,2025-01-02T10:00:00Z,,,,,,,
order_placed,o2,c2,shop-b,2025-01-03T10:00:00Z,EUR,900,0,X-1,socks,3,300
"""
)


def test_csv_rows_of_one_order_become_one_event(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CSV)
    records = [(key, orjson.loads(value)) for key, value in read_records(path)]
    assert [key for key, _ in records] == [b"c1", b"c1", b"c2"]
    first, cancel, other = (event for _, event in records)
    assert first == {
        "type": "order_placed",
        "order_id": "o1",
        "customer_id": "c1",
        "occurred_at": "2025-01-01T10:00:00Z",
        "currency": "EUR",
        "total": 4500,
        "discount": 500,
        "lines": [
            {"sku": "S-1", "category": "shoes", "quantity": 1, "unit_price": 4000},
            {"sku": "B-2", "category": "bags", "quantity": 2, "unit_price": 500},
        ],
    }
    assert cancel == {
        "type": "order_cancelled",
        "order_id": "o1",
        "customer_id": "c1",
        "occurred_at": "2025-01-02T10:00:00Z",
    }
    assert other["shop_id"] == "shop-b"


def test_csv_with_a_non_integer_amount_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CSV.replace("4500,500,S-1", "45.00,500,S-1"))
    with pytest.raises(ReplayError, match=r"orders.csv:2: total must be an integer"):
        list(read_records(path))


def test_csv_without_required_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("order_id,total\no1,5\n")
    with pytest.raises(ReplayError, match="lacks"):
        list(read_records(path))


def test_json_lines_are_published_as_they_are_keyed_by_customer(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    good = b'{"type":"order_placed","customer_id":"c9","order_id":"o9"}'
    path.write_bytes(good + b"\n\n{broken\n")
    assert list(read_records(path)) == [(b"c9", good), (None, b"{broken")]


def test_csv_refunds_of_one_order_are_events_of_their_own(tmp_path: Path) -> None:
    """Two refunds of one order are two events: by their time, or by their refund_id when
    they share an instant (a single event would have lost one of them)."""
    path = tmp_path / "orders.csv"
    path.write_text(
        HEADER
        + """sku,category,quantity,unit_price,refund_id
order_refunded,o1,c1,,2025-01-05T10:00:00Z,EUR,500,,,,,,
order_refunded,o1,c1,,2025-01-06T10:00:00Z,EUR,700,,,,,,
order_refunded,o1,c1,,2025-01-07T10:00:00Z,EUR,100,,,,,,r1
order_refunded,o1,c1,,2025-01-07T10:00:00Z,EUR,200,,,,,,r2
"""
    )
    records = list(read_records(path))
    received = datetime(2025, 2, 1, tzinfo=UTC)
    assert all(decode_order(key, value, received) for key, value in records)  # valid events
    events = [orjson.loads(value) for _, value in records]
    assert [(e["total"], e.get("refund_id")) for e in events] == [
        (500, None),
        (700, None),
        (100, "r1"),
        (200, "r2"),
    ]
