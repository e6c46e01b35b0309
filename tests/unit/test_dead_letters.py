"""A dead letter read back: what its headers say, as `segmenter dead-letters` shows it."""

from __future__ import annotations

from types import SimpleNamespace

from streams.dlq import DeadLetter, SourceRecord, dlq_headers, redrive_headers


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
