"""A dead letter read back: what its headers say, as `segmenter dead-letters` shows it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from streams.dlq import (
    KEPT_BYTES,
    MAX_DEAD_LETTER_BYTES,
    ORIGINAL_SHA256,
    REASONS,
    REDRIVEN_FROM,
    TRUNCATED_FROM,
    DeadLetter,
    DeadLetters,
    SourceRecord,
    dlq_headers,
    redrive_headers,
    to_redrive,
)
from streams.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]


def test_a_dead_letter_reads_back_what_was_written() -> None:
    source = SourceRecord(b"c\xc3\xa9", b"{not json", "orders", 3, 1234)
    headers = dlq_headers("malformed_json", "not valid JSON: line 1", source)
    record = SimpleNamespace(
        offset=7, partition=1, key=source.key, value=source.value, headers=list(headers.items())
    )
    letter = DeadLetter.from_record(record)
    assert (letter.reason, letter.message) == ("malformed_json", "not valid JSON: line 1")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "orders",
        3,
        1234,
    )
    assert letter.failed_at == headers["segmenter.dlq.failed_at"].decode()
    assert letter.as_json()["key"] == "cé"
    assert letter.as_json()["value"] == "{not json"
    assert letter.as_json()["dlq"] == {"partition": 1, "offset": 7}
    assert redrive_headers(letter, "orders-dlq") == [
        ("segmenter.redriven_from", b"orders-dlq[1]@7"),
        ("segmenter.redriven_reason", b"malformed_json"),
    ]


def test_a_record_without_the_headers_is_shown_as_unknown() -> None:
    record = SimpleNamespace(offset=0, partition=0, key=None, value=b"x", headers=[])
    letter = DeadLetter.from_record(record)
    assert (letter.reason, letter.source_topic, letter.source_offset) == ("unknown", "", None)
    assert letter.as_json()["key"] is None


def test_a_record_sent_back_and_rejected_again_is_sent_back_once_more_not_twice() -> None:
    """A redrive sends each dead letter back; one that fails again comes back naming the dead
    letter it was sent from, and the next redrive sends only the newer one."""

    def letter(offset: int, redriven_from: str = "") -> DeadLetter:
        return DeadLetter(
            offset, 0, b"k", b"v", "processing_error", "", "orders", 0, 9, "", redriven_from
        )

    first, other = letter(0), letter(1)
    again = letter(2, redriven_from=first.position("orders-dlq"))
    assert to_redrive([first, other, again], "orders-dlq") == [other, again]
    # the dead letter of a record sent back names where it came from
    source = SourceRecord(b"k", b"v", "orders", 0, 12, None, [(REDRIVEN_FROM, b"orders-dlq[0]@0")])
    headers = dlq_headers("processing_error", "boom", source)
    assert headers[REDRIVEN_FROM] == b"orders-dlq[0]@0"
    record = SimpleNamespace(
        offset=2, partition=0, key=b"k", value=b"v", headers=list(headers.items())
    )
    assert DeadLetter.from_record(record).redriven_from == "orders-dlq[0]@0"


def test_every_reason_the_code_dead_letters_for_is_known_and_documented() -> None:
    code = "".join(
        p.read_text() for p in [*(ROOT / "streams").rglob("*.py"), *(ROOT / "models").rglob("*.py")]
    )
    used = set(re.findall(r'(?:DecodeError|OrderRejected)\(\s*"([a-z_]+)"', code))
    used |= set(re.findall(r'_dead_letter\(\w+, "([a-z_]+)"', code))
    assert used and used <= set(REASONS)
    events = (ROOT / "docs/events.md").read_text()
    row = next(line for line in events.splitlines() if line.startswith("| `segmenter.dlq.reason`"))
    assert re.findall(r"`([a-z_]+)`", row.split("|")[2]) == list(REASONS)
    # the metric has every reason from the start (an alert on its increase sees the first one)
    samples = WorkerMetrics().dead_letters.collect()[0].samples
    assert {s.labels["reason"] for s in samples if s.name.endswith("_total")} == set(REASONS)


class _Sent:
    def __init__(self) -> None:
        self.records: list[tuple[Any, Any, dict[str, bytes]]] = []

    async def send(self, key: Any, value: Any, headers: dict[str, bytes]) -> None:
        self.records.append((key, value, headers))


async def test_a_record_too_large_for_the_producer_is_dead_lettered_truncated_and_named() -> None:
    """A record near the broker's limit (the producer refuses over 1,000,000 bytes) is kept as
    its beginning, with its size and hash: it reaches the dead-letter topic instead of failing
    its batch at every restart."""
    value = b'{"type": "order_placed", "pad": "' + b"x" * 1_000_100 + b'"}'
    topic = _Sent()
    await DeadLetters(topic).send(
        SourceRecord(b"c1", value, "orders", 0, 5), "too_large", "order event too large"
    )
    ((key, kept, headers),) = topic.records
    assert key == b"c1" and kept == value[:KEPT_BYTES]
    assert headers[TRUNCATED_FROM] == str(len(value) + 2).encode()
    assert headers[ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert len(key) + len(kept) + sum(len(v) for v in headers.values()) < 1_000_000
    assert b"kept as their first 65536" in headers["segmenter.dlq.message"]


async def test_a_record_within_the_limit_is_dead_lettered_whole() -> None:
    value = b"x" * MAX_DEAD_LETTER_BYTES
    topic = _Sent()
    await DeadLetters(topic).send(SourceRecord(b"", value, "orders", 0, 5), "too_large", "big")
    ((_, kept, headers),) = topic.records
    assert kept == value and TRUNCATED_FROM not in headers


def test_a_truncated_dead_letter_reads_back_as_such_and_is_not_redriven() -> None:
    headers = [
        ("segmenter.dlq.reason", b"too_large"),
        ("segmenter.dlq.topic", b"orders"),
        ("segmenter.dlq.partition", b"0"),
        ("segmenter.dlq.offset", b"5"),
        (TRUNCATED_FROM, b"1000103"),
    ]
    whole = SimpleNamespace(offset=0, partition=0, key=b"k", value=b"{", headers=headers[:4])
    cut = SimpleNamespace(offset=1, partition=0, key=b"k", value=b"{", headers=headers)
    letters = [DeadLetter.from_record(whole), DeadLetter.from_record(cut)]
    assert [letter.truncated_from for letter in letters] == [None, 1_000_103]
    assert letters[1].as_json()["truncated_from"] == 1_000_103
    assert to_redrive(letters, "orders-dlq") == letters[:1]
