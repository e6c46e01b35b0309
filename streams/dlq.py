"""The dead-letter topic: rejected records keep their original key and bytes, with the reason,
the message and the source position in headers (the Kafka Connect convention)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

HEADER_PREFIX = "segmenter.dlq."
# The header of a record sent back by ``segmenter dead-letters --redrive``: the dead letter it
# came from (``<topic>[<partition>]@<offset>``); a dead letter of it carries it on.
REDRIVEN_FROM = "segmenter.redriven_from"
# Every reason a record is dead-lettered for (the metric's series exist from the start, so an
# alert on their increase sees the first one).
REASONS = (
    "malformed_json",
    "schema_violation",
    "invalid_id",  # an id or a name with a control character (would reach logs and terminals)
    "unknown_event_type",
    "too_large",
    "empty_value",
    "missing_key",
    "invalid_key",
    "key_mismatch",
    "currency_mismatch",
    "too_many_refunds",  # beyond the refunds a state keeps per order (models/state.py)
    "too_many_waiting",  # beyond the cancellations and refunds a state keeps waiting
    "processing_error",
    "repeated_failure",  # processing raised at every attempt (streams.failures)
    "state_too_large",  # the customer's state or a transition would exceed a record's size
)


class SourceRecord(NamedTuple):
    """An input record as it came off the broker (a plain tuple: one per record)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    # The record's timestamp (seconds since the epoch; the producer's or the broker's).
    timestamp: float | None = None
    # The record's headers, as the client gives them ((name, bytes) pairs, or a mapping).
    headers: Any = None


def dlq_headers(reason: str, message: str, source: SourceRecord) -> dict[str, bytes]:
    """Headers that tell an operator why and from where a record was dead-lettered (and, for a
    record sent back from the dead-letter topic, which dead letter it was)."""
    headers = {
        f"{HEADER_PREFIX}reason": reason.encode(),
        f"{HEADER_PREFIX}message": message[:2000].encode("utf-8", "replace"),
        f"{HEADER_PREFIX}topic": source.topic.encode(),
        f"{HEADER_PREFIX}partition": str(source.partition).encode(),
        f"{HEADER_PREFIX}offset": str(source.offset).encode(),
        f"{HEADER_PREFIX}failed_at": datetime.now(UTC).isoformat().encode(),
    }
    pairs = source.headers.items() if isinstance(source.headers, dict) else source.headers or ()
    for name, value in pairs:
        if name == REDRIVEN_FROM and value is not None:
            headers[REDRIVEN_FROM] = bytes(value)
    return headers


# A dead letter's key and value together stay under this many bytes: the producer refuses a
# request over 1,000,000 bytes (Faust's default), and a record that cannot be dead-lettered
# would fail its batch again at every restart. A larger record keeps its first ``KEPT_BYTES``
# bytes, with its original size and SHA-256 in headers (it cannot be sent back whole).
MAX_DEAD_LETTER_BYTES = 900_000
KEPT_BYTES = 65_536
TRUNCATED_FROM = f"{HEADER_PREFIX}truncated_from"
ORIGINAL_SHA256 = f"{HEADER_PREFIX}original_sha256"


def within_limit(
    source: SourceRecord, message: str
) -> tuple[bytes | None, bytes | None, str, dict[str, bytes]]:
    """The key, value, message and extra headers a dead letter of ``source`` is sent with:
    the record as it is, or, past ``MAX_DEAD_LETTER_BYTES``, its first ``KEPT_BYTES`` bytes."""
    key, value = source.key, source.value
    size = len(key or b"") + len(value or b"")
    if size <= MAX_DEAD_LETTER_BYTES:
        return key, value, message, {}
    extra = {
        TRUNCATED_FROM: str(size).encode(),
        ORIGINAL_SHA256: hashlib.sha256(value or b"").hexdigest().encode(),  # of the value
    }
    note = f" (the record's {size} bytes are kept as their first {KEPT_BYTES} of key and value)"
    kept_key = None if key is None else key[:KEPT_BYTES]
    kept_value = None if value is None else value[:KEPT_BYTES]
    return kept_key, kept_value, message + note, extra


class DeadLetters:
    """Sends rejected records to the dead-letter topic; ``on_reason`` counts them."""

    def __init__(
        self,
        topic: Any,
        on_reason: Callable[[str], None] = lambda _reason: None,
        *,
        log_messages: bool = True,
    ) -> None:
        """``log_messages``: the reason's message goes to the log too (it may quote the
        record's ids: off when pseudonymisation is on, the dead letter's headers keep it)."""
        self._topic = topic
        self._on_reason = on_reason
        self._log_messages = log_messages

    async def send(self, source: SourceRecord, reason: str, message: str) -> Any:
        """Publish the record unchanged (or, past ``MAX_DEAD_LETTER_BYTES``, its beginning), with
        the reason in its headers; returns the delivery (awaitable: resolves once the broker
        has acknowledged the record)."""
        self._on_reason(reason)
        key, value, message, extra = within_limit(source, message)
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            source.topic,
            source.partition,
            source.offset,
            reason,
            message[:300] if self._log_messages else "(in the dead letter's headers)",
            extra={
                "topic": source.topic,
                "partition": source.partition,
                "offset": source.offset,
                "reason": reason,
            },
        )
        headers = {**dlq_headers(reason, message, source), **extra}
        return await self._topic.send(key=key, value=value, headers=headers)


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
    # The dead letter this record was sent back from (``segmenter dead-letters --redrive``).
    redriven_from: str = ""
    # The original size of a record kept truncated (None: kept whole).
    truncated_from: int | None = None

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
            redriven_from=(headers.get(REDRIVEN_FROM) or b"").decode("utf-8", "replace"),
            truncated_from=number("truncated_from"),
        )

    def position(self, dlq_topic: str) -> str:
        """Where this dead letter is (as ``redriven_from`` names it)."""
        return f"{dlq_topic}[{self.partition}]@{self.offset}"

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
            "redriven_from": self.redriven_from or None,
            "truncated_from": self.truncated_from,
            "key": _text(self.key),
            "value": _text(self.value),
        }


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def redrive_headers(letter: DeadLetter, dlq_topic: str) -> list[tuple[str, bytes]]:
    """The headers of a dead letter sent back to its source topic: where it was parked."""
    return [
        (REDRIVEN_FROM, letter.position(dlq_topic).encode()),
        ("segmenter.redriven_reason", letter.reason.encode()),
    ]


def to_redrive(letters: list[DeadLetter], dlq_topic: str) -> list[DeadLetter]:
    """The dead letters to send back: all but those sent back before that failed again (a
    later dead letter names them in ``redriven_from``; the later one is sent instead), so that
    running a redrive again does not send a record twice over, and those kept truncated
    (they cannot be sent back whole)."""
    again = {letter.redriven_from for letter in letters if letter.redriven_from}
    return [
        letter
        for letter in letters
        if letter.position(dlq_topic) not in again and letter.truncated_from is None
    ]
