"""streams.framework.intake: batches taken from the agent's channel queue as Faust's stream
would hand the events over (skips, tracking, acknowledgement), a batch at a time."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.framework import intake


@dataclass(eq=False)
class Message:
    offset: int
    topic: str = "orders"
    generation_id: int = 1
    tracked: bool = False
    partition: int = 0

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass(eq=False)
class Event:
    message: Message
    acks: list[Message]
    last: bool = True

    def ack(self) -> bool:
        self.acks.append(self.message)
        return self.last


class Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


@dataclass
class Monitor:
    stream_inbound_time: dict[Any, float] = field(default_factory=dict)
    events_total: int = 0


@dataclass
class App:
    consumer_generation_id: int = 1
    flow_control: Flow = field(default_factory=Flow)
    tracked: list[Message] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    acking: set[str] = field(default_factory=lambda: {"orders"})
    # the consumer's bookkeeping intake records the offsets never delivered in
    _committed_offset: dict[Any, int] = field(default_factory=dict)
    _gap: defaultdict[Any, IntervalTree] = field(default_factory=lambda: defaultdict(IntervalTree))

    def __post_init__(self) -> None:
        self.consumer = self
        self.topics = self
        self.sensors = self
        self.monitor = Monitor()

    def track_message(self, message: Message) -> None:
        self.tracked.append(message)

    def acks_enabled_for(self, topic: str) -> bool:
        return topic in self.acking

    def on_message_out(self, tp: Any, offset: int, message: Message) -> None:
        self.out.append(offset)


class Channel:
    def __init__(self) -> None:
        flow = FlowControlEvent()
        flow.resume()
        self.queue: ThrowableQueue[Event] = ThrowableQueue(maxsize=100, flow_control=flow)

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Event:
        return await self.queue.get()


class Stream:
    def __init__(self) -> None:
        self.channel = Channel()


def _events(offsets: range, acks: list[Message], **kwargs: Any) -> list[Event]:
    return [Event(Message(offset, **kwargs), acks) for offset in offsets]


async def _until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_queued_events_fill_batches_up_to_the_limit_in_order() -> None:
    app, stream, acks = App(), Stream(), []
    events = _events(range(7), acks)
    for event in events:
        stream.channel.queue.put_nowait(event)
    batches = intake.batches(app, stream, 3, within=0)
    got = []
    for _ in range(3):
        got.append([e.message.offset for e in await anext(batches)])
    assert got == [[0, 1, 2], [3, 4, 5], [6]]
    assert [m.offset for m in app.tracked] == list(range(7))
    assert [e.message.tracked for e in events] == [True] * 7
    assert acks == []  # taking a batch acknowledges nothing


async def test_an_event_arriving_within_the_wait_joins_the_batch_which_goes_once_full() -> None:
    app, stream, acks = App(), Stream(), []
    first, second, third = _events(range(3), acks)
    queue = stream.channel.queue
    queue.put_nowait(first)
    batches = intake.batches(app, stream, 2, within=30.0)
    pending = asyncio.ensure_future(anext(batches))
    await _until(lambda: bool(queue._getters))  # waiting for more, the batch not full
    assert not pending.done()
    queue.put_nowait(second)
    batch = await asyncio.wait_for(pending, 5)  # full: no waiting out the 30 s
    assert [e.message.offset for e in batch] == [0, 1]
    queue.put_nowait(third)
    assert not queue.empty()


async def test_a_batch_goes_with_what_it_has_once_the_wait_is_over() -> None:
    app, stream, acks = App(), Stream(), []
    stream.channel.queue.put_nowait(_events(range(1), acks)[0])
    batch = await asyncio.wait_for(anext(intake.batches(app, stream, 1000, within=0.05)), 5)
    assert [e.message.offset for e in batch] == [0]


async def test_events_of_another_generation_or_while_the_flow_is_held_are_skipped() -> None:
    app, stream, acks = App(consumer_generation_id=2), Stream(), []
    queue = stream.channel.queue
    old = _events(range(0, 2), acks, generation_id=1)
    new = _events(range(2, 4), acks, generation_id=2)
    for event in old + new:
        queue.put_nowait(event)
    batch = await anext(intake.batches(app, stream, 10, within=0))
    assert [e.message.offset for e in batch] == [2, 3]
    assert app.tracked == [e.message for e in new]  # skipped events are not tracked
    assert not any(e.message.tracked for e in old)

    app.flow_control.active = False
    queue.put_nowait(_events(range(4, 5), acks, generation_id=2)[0])
    held_batches = intake.batches(app, stream, 10, within=0)
    pending = asyncio.ensure_future(anext(held_batches))
    await _until(lambda: bool(queue._getters))  # the held event was skipped; waits again
    app.flow_control.active = True
    queue.put_nowait(_events(range(5, 6), acks, generation_id=2)[0])
    assert [e.message.offset for e in await asyncio.wait_for(pending, 5)] == [5]


async def test_tracked_once_and_only_on_acknowledged_topics() -> None:
    app, stream, acks = App(), Stream(), []
    queue = stream.channel.queue
    again = _events(range(1), acks)[0]
    again.message.tracked = True  # already tracked (delivered before)
    unacked_topic = _events(range(1, 2), acks, topic="other")[0]
    plain = _events(range(2, 3), acks)[0]
    for event in (again, unacked_topic, plain):
        queue.put_nowait(event)
    batch = await anext(intake.batches(app, stream, 10, within=0))
    assert batch == [again, unacked_topic, plain]
    assert app.tracked == [plain.message]
    assert (unacked_topic.message.tracked, plain.message.tracked) == (False, True)


async def _waiting(stream: Stream, within: float) -> tuple[Any, asyncio.Future[Any]]:
    """The batches of ``stream`` (up to 10 records) and their next batch, started and waiting
    on the channel's queue."""
    queue = stream.channel.queue
    batches = intake.batches(App(), stream, 10, within=within)
    pending = asyncio.ensure_future(anext(batches))
    await _until(lambda: bool(queue._getters))
    return batches, pending


async def test_the_batches_end_when_the_channel_stops() -> None:
    stream = Stream()
    _batches, pending = await _waiting(stream, within=0)
    await stream.channel.queue.throw(StopAsyncIteration())  # what Faust's channel does on stop
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)


async def test_an_error_thrown_while_waiting_ends_the_batches_after_the_events_taken() -> None:
    stream, acks = Stream(), []
    stream.channel.queue.put_nowait(_events(range(1), acks)[0])
    batches, pending = await _waiting(stream, within=30.0)  # the batch waits for more
    await stream.channel.queue.throw(RuntimeError("broken channel"))
    batch = await asyncio.wait_for(pending, 5)
    assert [e.message.offset for e in batch] == [0]  # tracked, so handed on to be acknowledged
    with pytest.raises(RuntimeError, match="broken channel"):
        await anext(batches)


async def test_the_channel_stopping_while_waiting_hands_on_the_events_taken_then_ends() -> None:
    stream, acks = Stream(), []
    stream.channel.queue.put_nowait(_events(range(1), acks)[0])
    batches, pending = await _waiting(stream, within=30.0)
    await stream.channel.queue.throw(StopAsyncIteration())
    assert [e.message.offset for e in await asyncio.wait_for(pending, 5)] == [0]
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_a_get_still_waiting_when_its_batch_went_starts_the_next_batch() -> None:
    app, stream, acks = App(), Stream(), []
    queue = stream.channel.queue
    first, second, third = _events(range(3), acks)
    queue.put_nowait(first)
    batches = intake.batches(app, stream, 10, within=0.05)
    assert await asyncio.wait_for(anext(batches), 5) == [first]  # the wait ran out
    assert len(queue._getters) == 1  # its get still waits, not cancelled
    queue.put_nowait(second)  # received by that get
    queue.put_nowait(third)
    assert await asyncio.wait_for(anext(batches), 5) == [second, third]
    await batches.aclose()
    await _until(lambda: not queue._getters)  # closing the batches cancels a waiting get


async def test_faust_monitor_learns_when_each_partition_last_took_an_event() -> None:
    app, stream, acks = App(), Stream(), []
    events = _events(range(2), acks) + _events(range(2, 3), acks, partition=5)
    for event in events:
        stream.channel.queue.put_nowait(event)
    await anext(intake.batches(app, stream, 10, within=0))
    assert set(app.monitor.stream_inbound_time) == {("orders", 0), ("orders", 5)}
    assert app.monitor.events_total == 3


async def test_a_failed_batch_is_forgotten_unacknowledged() -> None:
    """Faust's wait for acknowledgements (rebalance, stop) waits for tracked messages only."""
    app, stream, acks = App(), Stream(), []
    app.consumer._unacked_messages = set()  # what track_message adds to, in Faust
    app.track_message = app.consumer._unacked_messages.add
    events = _events(range(3), acks)
    for event in events:
        stream.channel.queue.put_nowait(event)
    batch = await anext(intake.batches(app, stream, 2, within=0))
    assert app.consumer._unacked_messages == {e.message for e in batch}
    intake.forget(app, batch)
    assert app.consumer._unacked_messages == set()
    assert acks == [] and app.out == []  # nothing acknowledged: read again after a restart


def test_ack_reports_the_message_out_only_when_it_was_the_last_acknowledgement() -> None:
    app, acks = App(), []
    last, shared = _events(range(2), acks)
    shared.last = False
    intake.ack(app, last)
    intake.ack(app, shared)
    assert acks == [last.message, shared.message]
    assert app.out == [0]


async def test_the_installed_faust_gives_what_intake_reads() -> None:
    """An agent's stream reads an iterator channel registered with the app's conductor (so
    ``intake`` takes from the queue the conductor fills, and no second channel is made), and
    Faust's messages carry the generation and tracking flags ``intake`` checks."""
    import faust
    from faust.transport.consumer import Consumer
    from faust.types.tuples import ConsumerMessage

    app = faust.App(
        "intake-test",
        broker="kafka://127.0.0.1:1",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
    )
    topic = app.topic("orders", key_serializer="raw", value_serializer="raw")

    @app.agent(topic)
    async def process(stream: Any) -> None:  # pragma: no cover - never started
        async for _ in stream:
            pass

    channel = process.stream().channel
    assert channel.is_iterator
    assert aiter(channel) is channel
    assert channel in app.topics._topics
    assert isinstance(channel.queue, ThrowableQueue)

    # what the consumer makes of a fetched record: untracked until a stream takes it in
    message = ConsumerMessage("orders", 0, 7, 0.0, 0, [], b"k", b"v", None, generation_id=3)
    assert (message.generation_id, message.tracked, message.refcount) == (3, False, 0)
    assert callable(Consumer.track_message)
    assert callable(app.flow_control.is_active)
    assert app.topics.acks_enabled_for("orders") is False  # no subscription yet


def _gaps(app: App, tp: Any = ("orders", 0)) -> list[tuple[int, int]]:
    return sorted((i.begin, i.end) for i in app._gap[tp])


async def test_offsets_never_delivered_are_recorded_exactly() -> None:
    app, stream, acks = App(), Stream(), []
    app._committed_offset[("orders", 0)] = 100
    # 100 and 101 are transaction markers (never delivered); 105..106 compacted away
    for offset in (102, 103, 104, 107):
        stream.channel.queue.put_nowait(Event(Message(offset), acks))
    batch = await anext(intake.batches(app, stream, 10, within=0))
    assert [e.message.offset for e in batch] == [102, 103, 104, 107]
    # the delivered records themselves are never in a gap: only acknowledged, they count
    assert _gaps(app) == [(100, 102), (105, 107)]


async def test_a_new_generation_starts_from_the_committed_offset_again() -> None:
    app, stream, acks = App(), Stream(), []
    app._committed_offset[("orders", 0)] = 10
    stream.channel.queue.put_nowait(Event(Message(10), acks))
    stream.channel.queue.put_nowait(Event(Message(11), acks))
    await anext(intake.batches(app, stream, 2, within=0))
    # a rebalance: the partition is read again from its committed offset (now 11)
    app.consumer_generation_id = 2
    app._committed_offset[("orders", 0)] = 11
    stream.channel.queue.put_nowait(Event(Message(11, generation_id=2), acks))
    await anext(intake.batches(app, stream, 1, within=0))
    assert _gaps(app) == []


async def test_a_skipped_event_stops_gaps_being_recorded_past_it() -> None:
    app, stream, acks = App(), Stream(), []
    app._committed_offset[("orders", 0)] = 0
    stream.channel.queue.put_nowait(Event(Message(0), acks))
    await anext(intake.batches(app, stream, 1, within=0))
    app.flow_control.active = False  # a rebalance holds the flow: 1 is skipped, not processed
    stream.channel.queue.put_nowait(Event(Message(1), acks))
    taking = asyncio.ensure_future(anext(intake.batches(app, stream, 10, within=0)))
    await _until(stream.channel.queue.empty)
    app.flow_control.active = True
    stream.channel.queue.put_nowait(Event(Message(2), acks))
    batch = await asyncio.wait_for(taking, 5)
    assert [e.message.offset for e in batch] == [2]
    assert _gaps(app) == []  # 1 was not delivered to the agent, but it is no gap either


async def test_with_no_commit_yet_the_first_delivered_offset_is_where_commits_start() -> None:
    app, stream, acks = App(), Stream(), []
    stream.channel.queue.put_nowait(Event(Message(5), acks))
    await anext(intake.batches(app, stream, 1, within=0))
    assert intake.Positions.of(app).first == {("orders", 0): 5}
    assert _gaps(app) == []


# -- the buffered path ---------------------------------------------------------------------------


class BufferedApp(App):
    """An app whose consumer keeps Faust's unacknowledged set and acknowledges messages."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unacked_messages: set[Message] = set()
        self.acked: list[int] = []

    def ack(self, message: Message) -> bool:
        self._unacked_messages.discard(message)
        self.acked.append(message.offset)
        return True


async def test_buffered_records_come_in_batches_in_order_and_are_tracked() -> None:
    app = BufferedApp()
    buffer = intake.Buffer(app, ["orders"], limit=100)
    for offset in range(5):
        await buffer.deliver(Message(offset))
    batches = buffer.batches(3, within=0)
    first = await anext(batches)
    second = await anext(batches)
    assert [[m.offset for m in b] for b in (first, second)] == [[0, 1, 2], [3, 4]]
    assert {m.offset for m in app._unacked_messages} == {0, 1, 2, 3, 4}
    buffer.ack(first)
    buffer.forget(second)
    assert app.acked == [0, 1, 2] and app._unacked_messages == set()
    assert app.monitor.events_total == 5


async def test_a_full_buffer_holds_the_delivery_until_a_batch_is_taken() -> None:
    app = BufferedApp()
    buffer = intake.Buffer(app, ["orders"], limit=2)
    await buffer.deliver(Message(0))
    blocked = asyncio.ensure_future(buffer.deliver(Message(1)))
    await asyncio.sleep(0)
    assert not blocked.done()  # the buffer is full: the fetcher's delivery waits
    batch = await anext(buffer.batches(10, within=0))
    await asyncio.wait_for(blocked, 5)
    assert [m.offset for m in batch] == [0, 1]


async def test_a_batch_waits_within_its_time_for_more_records() -> None:
    app = BufferedApp()
    buffer = intake.Buffer(app, ["orders"], limit=100)
    await buffer.deliver(Message(0))
    taking = asyncio.ensure_future(anext(buffer.batches(2, within=30.0)))
    await asyncio.sleep(0)
    assert not taking.done()
    await buffer.deliver(Message(1))
    batch = await asyncio.wait_for(taking, 5)  # full: goes before its wait is over
    assert [m.offset for m in batch] == [0, 1]


async def test_buffered_records_of_another_generation_or_held_flow_are_skipped() -> None:
    app = BufferedApp(consumer_generation_id=2)
    buffer = intake.Buffer(app, ["orders"], limit=100)
    await buffer.deliver(Message(0, generation_id=1))  # fetched before the rebalance
    await buffer.deliver(Message(1, generation_id=2))
    batch = await anext(buffer.batches(10, within=0))
    assert [m.offset for m in batch] == [1]
    assert buffer.current(batch)
    app.consumer_generation_id = 3
    assert not buffer.current(batch)


async def test_a_table_reads_the_partition_of_the_activated_record() -> None:
    import faust

    app = BufferedApp()
    buffer = intake.Buffer(app, ["orders"], limit=100)
    buffer.activate(Message(7, partition=3))
    event = faust.current_event()
    assert event is not None and (event.message.partition, event.message.offset) == (3, 7)
    buffer.activate(None)
    assert faust.current_event() is None


def test_the_conductor_hands_the_buffer_s_topics_to_it_and_the_rest_to_faust() -> None:
    from types import SimpleNamespace

    from faust.types import TP

    app = BufferedApp()
    buffer = intake.Buffer(app, ["orders"], limit=10)
    conductor = SimpleNamespace(app=app)
    assert intake.buffered_handler(conductor, TP("orders", 0)) == buffer.deliver
    assert intake.buffered_handler(conductor, TP("app-customers-changelog", 0)) is None
    assert intake.buffered_handler(SimpleNamespace(app=App()), TP("orders", 0)) is None


def test_each_agent_s_buffer_takes_its_own_topics_and_a_topic_has_one_buffer() -> None:
    from types import SimpleNamespace

    from faust.types import TP

    app = BufferedApp()
    inputs = intake.Buffer(app, ["orders", "consent"], limit=10)
    activity = intake.Buffer(app, ["activity"], limit=10)
    conductor = SimpleNamespace(app=app)
    assert intake.buffered_handler(conductor, TP("consent", 1)) == inputs.deliver
    assert intake.buffered_handler(conductor, TP("activity", 0)) == activity.deliver
    with pytest.raises(ValueError, match="topic 'activity' already has a buffer"):
        intake.Buffer(app, ["activity"], limit=10)
