"""The wait for the table's changelog records (streams.app._producer_drained), on Faust's own
producer buffer: every queued record is handed to the producer, in order, before the flush."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from streams.app import _producer_drained


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
