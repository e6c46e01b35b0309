"""Publishing historical orders to the orders topic: JSON lines as they are, or CSV rows.

The worker validates; replay does not, so a bad line reaches the dead-letter topic like any
bad record would. Records are keyed by ``customer_id`` (what the worker expects).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from config.settings import Settings
from streams.clients import kafka_options, started

CSV_ORDER_FIELDS = (
    "type",
    "order_id",
    "customer_id",
    "shop_id",
    "occurred_at",
    "currency",
    "refund_id",
)
CSV_INT_FIELDS = ("total", "discount")
CSV_LINE_FIELDS = ("sku", "category", "quantity", "unit_price")


class ReplayError(ValueError):
    """The replay file cannot be read; the message names the file and line."""


def read_records(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) records from a ``.jsonl``/``.json`` or ``.csv`` file."""
    if path.suffix.lower() == ".csv":
        yield from _csv_records(path)
    else:
        yield from _jsonl_records(path)


def count_records(path: Path) -> int:
    return sum(1 for _ in read_records(path))


def _jsonl_records(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    with path.open("rb") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            yield _customer_key(line), line


def _customer_key(value: bytes) -> bytes | None:
    try:
        customer = orjson.loads(value).get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(customer).encode() if customer is not None else None


def _csv_records(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    """CSV: one row per order line; consecutive rows with the same type, order_id, occurred_at
    and refund_id form one event (two refunds of one order are two events). Columns: type,
    order_id, customer_id, shop_id, occurred_at, currency, total, discount, sku, category,
    quantity, unit_price (line columns empty for cancellations and refunds), and optionally
    refund_id (to tell apart refunds of one order at the same instant)."""
    current: dict[str, Any] | None = None
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"type", "order_id", "customer_id", "occurred_at"} - set(reader.fieldnames or ())
        if missing:
            raise ReplayError(f"{path}: CSV header lacks {sorted(missing)}")
        for row in reader:
            identity = _identity(row)
            if current is None or _identity(current) != identity:
                if current is not None:
                    yield current["customer_id"].encode(), orjson.dumps(current)
                current = {k: row[k] for k in CSV_ORDER_FIELDS if row.get(k)}
                for field in CSV_INT_FIELDS:
                    if row.get(field):
                        current[field] = _int(row[field], path, reader.line_num, field)
                if current.get("type") == "order_placed":
                    current["lines"] = []
            if row.get("sku") and "lines" in current:
                current["lines"].append(
                    {
                        "sku": row["sku"],
                        "category": row.get("category", ""),
                        "quantity": _int(
                            row.get("quantity", ""), path, reader.line_num, "quantity"
                        ),
                        "unit_price": _int(
                            row.get("unit_price", ""), path, reader.line_num, "unit_price"
                        ),
                    }
                )
    if current is not None:
        yield current["customer_id"].encode(), orjson.dumps(current)


def _identity(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k) or None for k in ("type", "order_id", "occurred_at", "refund_id"))


def _int(text: str, path: Path, line: int, field: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise ReplayError(
            f"{path}:{line}: {field} must be an integer in minor units, got {text!r}"
        ) from exc


async def publish(
    settings: Settings,
    records: Iterator[tuple[bytes | None, bytes]],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Publish records to the orders topic; returns how many were acknowledged."""
    producer = AIOKafkaProducer(
        **kafka_options(settings),
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
        enable_idempotence=True,
    )
    await started(producer)
    sent = 0
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(settings.orders_topic, value=value, key=key))
            if len(pending) >= 1000:
                for future in pending:
                    await future
                sent += len(pending)
                if progress:
                    progress(len(pending))
                pending = []
        for future in pending:
            await future
        sent += len(pending)
        if progress and pending:
            progress(len(pending))
    finally:
        await producer.stop()
    return sent
