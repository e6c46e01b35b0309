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
from collections import deque
from collections.abc import AsyncIterator, Iterable
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


# -- the buffered path: records without Faust's events -----------------------------------------


class Delivered:
    """What a table reads of the current event (``event.message``), for a record taken from a
    ``Buffer``."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Any) -> None:
        self.message = message


class Buffer:
    """The input records of ``topics``, handed over by the consumer's fetch straight into a
    buffer the agent takes batches from: no Faust event, channel or stream per record.

    Faust builds, for each fetched record, an event (key and value decoded, reference counts),
    puts it in the channel of each stream that reads the topic, and the stream hands it over and
    acknowledges it through the event; the sensors count each step. Here the conductor's
    callback for the topics' partitions (built by Faust per partition,
    ``Conductor._build_handler``; see ``streams.framework.patches``) appends the consumer's
    message to the buffer, and ``batches`` takes what is there. What the stream did with a
    record before the agent saw it is done here too (``_admit``): a record of an older consumer
    generation, or taken while a rebalance holds the flow, is skipped; every other one is
    tracked as unacknowledged until ``ack``, which makes a rebalance or a stop wait for it.

    The buffer holds at most ``limit`` records: a delivery into a full buffer waits for room
    (the fetcher's delivery is then raced against a rebalance suspending the flow, as Faust's
    own delivery into a full stream buffer is)."""

    def __init__(self, app: Any, topics: Iterable[str], limit: int) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.limit = limit
        self._records: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._active: Delivered | None = None
        # What the conductor's handler builder looks for: the buffer of each topic (an agent's
        # buffer takes its topics; a topic has one buffer at most).
        buffers: dict[str, Buffer] | None = getattr(app, "_segmenter_buffers", None)
        if buffers is None:
            buffers = app._segmenter_buffers = {}
        for topic in self.topics:
            if topic in buffers:
                raise ValueError(f"topic {topic!r} already has a buffer")
            buffers[topic] = self

    async def deliver(self, message: Any) -> None:
        """The conductor's callback for a record of one of the topics."""
        records = self._records
        records.append(message)
        self._arrived.set()
        if len(records) >= self.limit:
            self._room.clear()
            await self._room.wait()

    async def batches(self, max_records: int, within: float) -> AsyncIterator[list[Any]]:
        """Batches of 1 to ``max_records`` messages: a batch starts with what the buffer holds;
        if that is less than the limit, records arriving within ``within`` seconds are added,
        and the batch goes as soon as it is full."""
        records, arrived = self._records, self._arrived
        while True:
            if not records:
                arrived.clear()
                await arrived.wait()
            batch: list[Any] = []
            deadline: float | None = None
            while True:
                while records and len(batch) < max_records:
                    message = records.popleft()
                    if self._admit(message):
                        batch.append(message)
                if len(records) < self.limit:
                    self._room.set()
                if len(batch) >= max_records or not batch:
                    break
                if deadline is None:
                    deadline = time.monotonic() + within
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), left)
                except TimeoutError:
                    break
            if batch:
                _arrived_messages(self.app, batch)
                yield batch

    def _admit(self, message: Any) -> bool:
        app = self.app
        consumer = app.consumer
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            if message.generation_id == app.consumer_generation_id:
                Positions.of(consumer).skipped(message.tp, message.generation_id)
            return False
        if not message.tracked:
            message.tracked = True
            consumer._unacked_messages.add(message)
            Positions.of(consumer).delivered(message.tp, message.generation_id, message.offset)
        return True

    def activate(self, message: Any | None) -> None:
        """Make ``message`` the current event's message of the running task (what a table
        reads to find the partition of a write; None: none)."""
        self._active = None if message is None else Delivered(message)
        _current_event.set(None if self._active is None else weakref.ref(self._active))

    def ack(self, messages: Iterable[Any]) -> None:
        """Acknowledge processed messages (their offsets may then be committed)."""
        ack = self.app.consumer.ack
        for message in messages:
            ack(message)

    def forget(self, messages: Iterable[Any]) -> None:
        """Stop tracking messages that will not be acknowledged (their batch failed or was
        given up): a rebalance or a stop no longer waits for them; their offsets stay
        uncommitted, and are read again after a restart or when their partitions move."""
        unacked = self.app.consumer._unacked_messages
        for message in messages:
            unacked.discard(message)

    def current(self, messages: Iterable[Any]) -> bool:
        """Whether the messages are of the consumer's current generation (no rebalance since
        they were taken: their partitions are still this worker's)."""
        generation = self.app.consumer_generation_id
        return all(message.generation_id == generation for message in messages)


def _arrived_messages(app: Any, batch: list[Any]) -> None:
    """As ``_arrived``, for messages."""
    monitor = app.monitor
    if monitor is None:
        return
    now = time.monotonic()
    inbound = monitor.stream_inbound_time
    for message in batch:
        inbound[message.tp] = now
    monitor.events_total += len(batch)


def buffered_handler(conductor: Any, tp: Any) -> Any:
    """The callback for ``tp`` when a ``Buffer`` of the conductor's app takes its topic, else
    None (Faust's own)."""
    buffers: dict[str, Buffer] = getattr(conductor.app, "_segmenter_buffers", {})
    buffer = buffers.get(tp.topic)
    return None if buffer is None else buffer.deliver
