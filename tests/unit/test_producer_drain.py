"""The wait for the tables' changelog records: every queued record is handed to the producer, in
order, before the flush (streams.app._producer_drained, on Faust's own producer buffer), and the
wait ends only when the broker has acknowledged every record (streams.app.ChangelogAcks)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.transport.producer import ProducerBuffer

from streams.app import ChangelogAcks, _producer_drained


async def test_every_queued_record_is_handed_over_before_the_flush() -> None:
    calls: list[Any] = []

    class Channel:
        async def publish_message(self, fut: Any, wait: bool = True) -> None:
            calls.append(("send", fut.name))
            if fut.name == "b":  # a record queued while another is handed over
                buffer.put(message("d"))

    def message(name: str) -> Any:
        return SimpleNamespace(name=name, message=SimpleNamespace(channel=Channel()))

    async def flush() -> None:
        calls.append(("flush", buffer.size))

    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    for name in "abc":
        buffer.put(message(name))  # type: ignore[arg-type]
    app = SimpleNamespace(producer=SimpleNamespace(buffer=buffer, flush=flush))

    await _producer_drained(app)  # type: ignore[arg-type]

    assert calls == [("send", "a"), ("send", "b"), ("send", "c"), ("send", "d"), ("flush", 0)]


class _Table:
    """A table whose changelog records are acknowledged when the test says so."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


def _app() -> Any:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]

    async def flush() -> None:
        return None

    return SimpleNamespace(producer=SimpleNamespace(buffer=buffer, flush=flush))


async def test_the_changelog_wait_ends_when_the_broker_acknowledged_every_record() -> None:
    """Not when the producer's queue is empty: a record can have left the queue and not be
    acknowledged yet (the background sender holds it, or it is in flight)."""
    customers, erasures = _Table(), _Table()
    acks = ChangelogAcks(_app())
    acks.watch(customers)
    acks.watch(erasures)
    customers.send_changelog(0, b"a", b"1")
    erasures.send_changelog(1, b"e", b"x")
    customers.send_changelog(0, b"b", b"2")
    waiting = asyncio.create_task(acks.wait())
    for future in [*customers.futures, erasures.futures[0]][:-1]:
        future.set_result(None)
        await asyncio.sleep(0)
        assert not waiting.done()
    erasures.futures[0].set_result(None)
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(acks.wait(), 1)  # nothing sent since: returns at once


async def test_a_changelog_record_the_broker_refused_fails_the_wait() -> None:
    customers = _Table()
    acks = ChangelogAcks(_app())
    acks.watch(customers)
    customers.send_changelog(0, b"a", b"1")
    customers.futures[0].set_exception(KafkaTimeoutError())
    with pytest.raises(KafkaTimeoutError):
        await acks.wait()
