"""The agent's records a batch at a time, read from its channel without Faust's per-event loop.

Faust's stream hands over one event per turn of the event loop (its iterator sleeps before
every event), and its ``take`` fills a batch through the stream, one event per turn as well:
with a backlog, a turn also runs the fetcher, the producer and the batch being written, so a
batch waited out its whole ``within`` and took a few dozen records where a thousand were
waiting in the channel. Here a batch is taken
from the agent's channel queue (where Faust's conductor puts the decoded events) in one go:
everything already there, up to the limit; if that is less than the limit, records arriving
within the wait are added, and the batch goes as soon as it is full.

What Faust's stream does with an event before the agent sees it is done here too, nothing
more: an event of an older consumer generation, or one taken while a rebalance holds the
flow, is skipped (it is neither processed nor acknowledged; the new assignment reads it
again), and every other event is tracked as unacknowledged, which makes a rebalance or a
shutdown wait for its acknowledgement (``ack``); Faust's monitor learns when each partition's
stream last took an event (its stall detector reads it).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from faust.streams import _current_event  # the variable behind faust.current_event()


async def batches(
    app: Any, stream: Any, max_records: int, within: float
) -> AsyncIterator[list[Any]]:
    """The stream's events, in batches of 1 to ``max_records``: a batch starts with the first
    event to arrive and takes what is queued behind it; it waits at most ``within`` seconds
    from its first event for the rest. An error thrown into the channel ends the batches
    after the events taken before it (the channel's stop, ``StopAsyncIteration``, ends them
    quietly)."""
    queue = aiter(stream.channel).queue  # the channel the conductor delivers to
    waiting: asyncio.Future[Any] | None = None  # a get still waiting when its batch went
    try:
        while True:
            batch: list[Any] = []
            error: Exception | None = None
            try:
                event = await (queue.get() if waiting is None else waiting)
                waiting = None
                _add(app, batch, event)
                deadline = time.monotonic() + within
                while len(batch) < max_records:
                    if not queue.empty():
                        _add(app, batch, queue.get_nowait())
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    # Not cancelled when the wait is over: a get cancelled as its event (or an
                    # error thrown into the channel) arrives would lose what it received.
                    waiting = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait((waiting,), timeout=left)
                    if not done:
                        break  # the next batch starts with what this get receives
                    event = waiting.result()
                    waiting = None
                    _add(app, batch, event)
            except Exception as exc:  # thrown into the channel
                error = exc
            if batch:
                _arrived(app, batch)
                yield batch
            if isinstance(error, StopAsyncIteration):  # the channel stops: so does the stream
                return
            if error is not None:
                raise error
    finally:
        if waiting is not None:
            waiting.cancel()


def _arrived(app: Any, batch: list[Any]) -> None:
    """Tell Faust's monitor its partitions' streams are processing (its stall detector logs a
    partition with a backlog whose stream took no event for a while), as the stream does."""
    monitor = app.monitor
    if monitor is None:
        return
    now = time.monotonic()
    inbound = monitor.stream_inbound_time
    for event in batch:
        inbound[event.message.tp] = now
    monitor.events_total += len(batch)


def _add(app: Any, batch: list[Any], event: Any) -> None:
    """As Faust's stream takes an event in: skipped when of another generation or while the
    flow is held; otherwise tracked until acknowledged."""
    message = event.message
    if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
        return
    if not message.tracked and app.topics.acks_enabled_for(message.topic):
        message.tracked = True
        app.consumer.track_message(message)
    batch.append(event)


def forget(app: Any, events: list[Any]) -> None:
    """Stop tracking events that will not be acknowledged (their batch failed and the agent
    stops): a rebalance or a stop no longer waits for them (Faust's wait for acknowledgements
    has no end). Their offsets stay uncommitted: they are read again after a restart or when
    their partitions move."""
    unacked = app.consumer._unacked_messages
    for event in events:
        unacked.discard(event.message)


def ack(app: Any, event: Any) -> None:
    """Acknowledge a processed event (its offset may then be committed), as Faust's stream
    does."""
    if event.ack():
        message = event.message
        app.sensors.on_message_out(message.tp, message.offset, message)


def activate(event: Any | None) -> None:
    """Make ``event`` the current event of the running task (what a table reads to find the
    partition of a write; None: none, as outside a stream): the stream's own
    ``current_event`` is not used, since the batches are read past the stream."""
    _current_event.set(None if event is None else weakref.ref(event))
