"""The dead-letter topic: rejected records keep their original key and bytes, with the reason,
the message and the source position in headers (the Kafka Connect convention)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

HEADER_PREFIX = "segmenter.dlq."


@dataclass(frozen=True)
class SourceRecord:
    """An input record as it came off the broker."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    # The record's timestamp (seconds since the epoch; the producer's or the broker's).
    timestamp: float | None = None


def dlq_headers(reason: str, message: str, source: SourceRecord) -> dict[str, bytes]:
    """Headers that tell an operator why and from where a record was dead-lettered."""
    return {
        f"{HEADER_PREFIX}reason": reason.encode(),
        f"{HEADER_PREFIX}message": message[:2000].encode("utf-8", "replace"),
        f"{HEADER_PREFIX}topic": source.topic.encode(),
        f"{HEADER_PREFIX}partition": str(source.partition).encode(),
        f"{HEADER_PREFIX}offset": str(source.offset).encode(),
        f"{HEADER_PREFIX}failed_at": datetime.now(UTC).isoformat().encode(),
    }


class DeadLetters:
    """Sends rejected records to the dead-letter topic and counts them by reason."""

    def __init__(self, topic: Any, on_reason: Callable[[str], None] = lambda _reason: None) -> None:
        self._topic = topic
        self._on_reason = on_reason
        self.counts: Counter[str] = Counter()

    async def send(self, source: SourceRecord, reason: str, message: str) -> Any:
        """Publish the record unchanged, with the reason in its headers; returns the delivery
        (awaitable: resolves once the broker has acknowledged the record)."""
        self.counts[reason] += 1
        self._on_reason(reason)
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            source.topic,
            source.partition,
            source.offset,
            reason,
            message[:300],
            extra={
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "reason": reason,
            },
        )
        return await self._topic.send(
            key=source.key, value=source.value, headers=dlq_headers(reason, message, source)
        )


@dataclass(frozen=True)
class DeadLetter:
    """A record of the dead-letter topic, read back: the original key and value, and what its
    headers say."""

    offset: int  # in the dead-letter topic (of its partition)
    partition: int
    key: bytes | None
    value: bytes | None
    reason: str
    message: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    failed_at: str

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """From an aiokafka ``ConsumerRecord`` of the dead-letter topic."""
        headers = {name: value for name, value in record.headers or ()}

        def header(name: str) -> str:
            value = headers.get(f"{HEADER_PREFIX}{name}")
            return value.decode("utf-8", "replace") if value is not None else ""

        def number(name: str) -> int | None:
            text = header(name)
            return int(text) if text.isdigit() else None

        return cls(
            offset=record.offset,
            partition=record.partition,
            key=record.key,
            value=record.value,
            reason=header("reason") or "unknown",
            message=header("message"),
            source_topic=header("topic"),
            source_partition=number("partition"),
            source_offset=number("offset"),
            failed_at=header("failed_at"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "message": self.message,
            "failed_at": self.failed_at,
            "source": {
                "topic": self.source_topic,
                "partition": self.source_partition,
                "offset": self.source_offset,
            },
            "dlq": {"partition": self.partition, "offset": self.offset},
            "key": _text(self.key),
            "value": _text(self.value),
        }


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def redrive_headers(letter: DeadLetter, dlq_topic: str) -> list[tuple[str, bytes]]:
    """The headers of a dead letter sent back to its source topic: where it was parked."""
    where = f"{dlq_topic}[{letter.partition}]@{letter.offset}"
    return [
        ("segmenter.redriven_from", where.encode()),
        ("segmenter.redriven_reason", letter.reason.encode()),
    ]
