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

Which offsets were never delivered is recorded here too (``Positions``), exactly: a commit may
pass those (a compacted record, a transaction marker), and nothing else that was not
acknowledged (see ``streams.framework.patches.next_commit``). Faust's own record of them
counted the record after a jump as never delivered as well, and missed a jump right after the
committed offset.
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
    consumer = app.consumer
    if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
        if message.generation_id == app.consumer_generation_id:
            Positions.of(consumer).skipped(message.tp, message.generation_id)
        return
    if not message.tracked and app.topics.acks_enabled_for(message.topic):
        message.tracked = True
        consumer.track_message(message)
        Positions.of(consumer).delivered(message.tp, message.generation_id, message.offset)
    batch.append(event)


class Positions:
    """Per input partition, the offset after the last one delivered to the agent in the
    consumer's current generation, and the offsets never delivered, which a commit may pass.

    A generation's first record is compared with the partition's committed offset (where the
    rebalance sought it); every later one with the record before it. Offsets in between were
    not in the fetch (compacted away, transaction markers): recorded in the consumer's gaps,
    which ``next_commit`` counts as done. An event skipped in the current generation (taken
    while the flow was held) makes the partition's position unknown until the next generation:
    no gap is recorded past it, and the commit waits for the rebalance that reads it again.
    With no committed offset yet, a generation's first delivered offset is where commits must
    start (``first``)."""

    __slots__ = ("consumer", "first", "next")

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.next: dict[Any, tuple[int, int | None]] = {}
        self.first: dict[Any, int] = {}

    @classmethod
    def of(cls, consumer: Any) -> Positions:
        positions: Positions | None = getattr(consumer, "_segmenter_positions", None)
        if positions is None:
            positions = cls(consumer)
            consumer._segmenter_positions = positions
        return positions

    def delivered(self, tp: Any, generation: int, offset: int) -> None:
        known = self.next.get(tp)
        if known is None or known[0] != generation:  # the generation's first record
            expected = self.consumer._committed_offset.get(tp)
            if expected is None:
                self.first[tp] = offset
            else:
                self.first.pop(tp, None)
        else:
            expected = known[1]
            if expected is None:  # a record of this generation was skipped: unknown
                return
        if expected is not None and offset > expected:
            self.consumer._gap[tp].addi(expected, offset)  # never delivered
        self.next[tp] = (generation, offset + 1)

    def skipped(self, tp: Any, generation: int) -> None:
        self.next[tp] = (generation, None)


def forget(app: Any, events: list[Any]) -> None:
    """Stop tracking events that will not be acknowledged (their batch failed and the agent
    stops): a rebalance or a stop no longer waits for them (Faust's wait for acknowledgements
    has no end). Their offsets stay uncommitted: they are read again after a restart or when
    their partitions move."""
    unacked = app.consumer._unacked_messages
    for event in events:
        unacked.discard(event.message)


def current(app: Any, events: list[Any]) -> bool:
    """Whether the events are of the consumer's current generation (no rebalance since they
    were taken: their partitions are still this worker's)."""
    generation = app.consumer_generation_id
    return all(event.message.generation_id == generation for event in events)


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
