"""The corrections to Faust (streams.framework.patches), on its own consumer bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import defaultdict
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.exceptions import PartitionsMismatch
from faust.tables.base import Collection
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as KafkaConsumer
from faust.types import TP
from intervaltree import IntervalTree
from mode.utils.locks import Event

from streams.framework import intake, patches

TP0 = TP("shop.orders", 0)


def bookkeeping(
    acked: list[int], committed: int | None, gaps: tuple[tuple[int, int], ...] = ()
) -> KafkaConsumer:
    """A consumer with only the state ``_new_offset`` reads (no broker, no service)."""
    consumer = KafkaConsumer.__new__(KafkaConsumer)  # the driver the worker uses
    consumer._acked = defaultdict(list, {TP0: list(acked)})
    consumer._acked_index = defaultdict(set, {TP0: set(acked)})
    consumer._gap = defaultdict(IntervalTree)
    for begin, end in gaps:
        consumer._gap[TP0].addi(begin, end)
    consumer._committed_offset = defaultdict(lambda: None, {TP0: committed})
    return consumer


def test_a_duplicate_acknowledgement_does_not_hold_the_commit_back() -> None:
    patches.apply()
    # every offset 160..296 processed once and recorded once more (a restore, then a seek)
    consumer = bookkeeping(sorted([*range(160, 297), *range(161, 297)]), committed=160)
    assert consumer._new_offset(TP0) == 297
    consumer._committed_offset[TP0] = 297  # the commit was made
    assert consumer._new_offset(TP0) is None
    assert consumer._acked[TP0] == []
    assert consumer._acked_index[TP0] == set()


def test_a_gap_already_acknowledged_is_counted_once() -> None:
    patches.apply()
    # records 259..330 processed; the gap 260..314 recorded by the seek as well
    consumer = bookkeeping(list(range(259, 331)), committed=259, gaps=((260, 315),))
    assert consumer._new_offset(TP0) == 331
    assert not consumer._gap[TP0]


def test_a_commit_that_did_not_happen_is_made_by_the_next_one() -> None:
    patches.apply()
    consumer = bookkeeping(list(range(10, 20)), committed=10)
    assert consumer._new_offset(TP0) == 20
    # no commit (the committed offset stays 10); more records are acknowledged
    consumer._acked[TP0].extend(range(20, 25))
    assert consumer._new_offset(TP0) == 25


def test_an_unacknowledged_offset_holds_the_commit_back() -> None:
    patches.apply()
    consumer = bookkeeping([100, 101, 101, 104, 105], committed=100)
    assert consumer._new_offset(TP0) == 102
    consumer._committed_offset[TP0] = 102
    assert consumer._new_offset(TP0) is None  # 102 and 103 are not done
    assert consumer._acked[TP0] == [104, 105]
    consumer._acked[TP0].extend([102, 103])
    assert consumer._new_offset(TP0) == 106


def test_a_failed_record_right_after_the_committed_offset_is_never_passed() -> None:
    patches.apply()
    # record 100 failed (not acknowledged); 101..103 were processed after it
    consumer = bookkeeping([101, 102, 103], committed=100)
    assert consumer._new_offset(TP0) is None
    consumer._acked[TP0].append(100)  # processed (or dead-lettered) at last
    assert consumer._new_offset(TP0) == 104


def test_with_no_commit_yet_a_failed_first_record_holds_the_commit_back() -> None:
    patches.apply()
    consumer = bookkeeping([1, 2], committed=None)
    intake.Positions.of(consumer).first[TP0] = 0  # the first delivered offset
    assert consumer._new_offset(TP0) is None
    consumer._acked[TP0].append(0)
    assert consumer._new_offset(TP0) == 3


def test_faust_s_own_guess_of_the_gaps_is_not_made() -> None:
    patches.apply()
    consumer = bookkeeping([], committed=5)
    asyncio.run(consumer._add_gap(TP0, 6, 9))
    assert not consumer._gap[TP0]


def test_a_real_gap_is_still_skipped() -> None:
    patches.apply()
    # offsets 5..9 never delivered (compaction, transaction markers): Faust skips them
    consumer = bookkeeping([1, 2, 3, 4, 10, 11], committed=1, gaps=((5, 10),))
    assert consumer._new_offset(TP0) == 12


class Recorder:
    """A consumer that records what is asked of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, frozenset[TP]]] = []

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        self.calls.append(("resume", frozenset(tps)))

    async def perform_seek(self) -> None:
        self.calls.append(("seek", frozenset()))


def recovery(generation: int) -> SimpleNamespace:
    return SimpleNamespace(
        app=SimpleNamespace(consumer=Recorder(), consumer_generation_id=generation)
    )


async def faust_order(self: Any, generation_id: int) -> None:
    """What Faust's ``on_recovery_completed`` does with the input partitions: resume, then seek."""
    self.app.consumer.resume_partitions({TP0})
    await self.app.consumer.perform_seek()


async def test_input_partitions_are_resumed_after_the_seek() -> None:
    completed = patches.resumed_after_seek(faust_order)
    done = recovery(generation=3)
    await completed(done, 3)
    assert done.app.consumer.calls == [("seek", frozenset()), ("resume", frozenset({TP0}))]
    assert "resume_partitions" not in vars(done.app.consumer)  # the method is the class's again


async def test_nothing_is_resumed_when_a_rebalance_began() -> None:
    async def rebalanced(self: Any, generation_id: int) -> None:
        await faust_order(self, generation_id)
        self.app.consumer_generation_id = generation_id + 1

    completed = patches.resumed_after_seek(rebalanced)
    done = recovery(generation=3)
    await completed(done, 3)
    assert done.app.consumer.calls == [("seek", frozenset())]


async def test_an_empty_set_of_active_partitions_fetches_nothing() -> None:
    patches.apply()
    live: set[TP] = {TP0}
    asked: list[Any] = []

    async def fetched_records(partitions: Any, timeout: float, max_records: int) -> dict:
        # aiokafka's own filter: ``if partitions and tp not in partitions: continue``
        asked.append(partitions)
        buffered = {TP0: ["r0"], TP("shop.orders", 1): ["r1"]}
        return {tp: r for tp, r in buffered.items() if not (partitions and tp not in partitions)}

    fetcher = SimpleNamespace(
        fetched_records=fetched_records,
        _closed=False,
        _subscriptions=SimpleNamespace(fetch_context=contextlib.nullcontext),
    )
    aiokafka = SimpleNamespace(_fetcher=fetcher, _closed=False)
    thread = SimpleNamespace(consumer=SimpleNamespace(flow_active=True))
    fetch = AIOKafkaConsumerThread._fetch_records
    assert await fetch(thread, aiokafka, live, timeout=0.0, max_records=10) == {TP0: ["r0"]}
    live.clear()  # a restore has just paused its partitions: none is active
    assert await fetch(thread, aiokafka, live, timeout=0.0, max_records=10) == {}
    live.add(TP0)
    assert TP0 in asked[-1]  # the live set, not a copy


def test_a_changelog_topic_not_in_the_metadata_yet_is_checked_again() -> None:
    patches.apply()
    known = {"shop.orders": 2, "app-customers-changelog": 0}
    table = SimpleNamespace(
        app=SimpleNamespace(consumer=SimpleNamespace(topic_partitions=known.get)),
        changelog_topic_name="app-customers-changelog",
        name="customers",
        _verified_source_topics_for_partitions=set(),
    )
    Collection._verify_source_topic_partitions(table, "shop.orders")  # no PartitionsMismatch
    assert table._verified_source_topics_for_partitions == set()  # checked again next time
    known["app-customers-changelog"] = 3  # a real mismatch still stops the agent
    with pytest.raises(PartitionsMismatch):
        Collection._verify_source_topic_partitions(table, "shop.orders")
    known["app-customers-changelog"] = 2
    Collection._verify_source_topic_partitions(table, "shop.orders")
    assert table._verified_source_topics_for_partitions == {"shop.orders"}


def draining() -> KafkaConsumer:
    """A consumer with only what ``wait_first`` reads, as ``_drain_messages`` calls it."""
    patches.apply()
    consumer = KafkaConsumer.__new__(KafkaConsumer)  # the driver the worker uses
    consumer._loop = asyncio.get_running_loop()
    consumer._stopped, consumer._crashed, consumer.suspend_flow = Event(), Event(), Event()
    return consumer


@contextlib.contextmanager
def tasks_created() -> Iterator[list[Any]]:
    """The coroutines the running loop wraps in tasks meanwhile."""
    created: list[Any] = []
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    loop.set_task_factory(
        lambda loop, coro, **kw: created.append(coro) or asyncio.Task(coro, loop=loop, **kw)
    )
    try:
        yield created
    finally:
        loop.set_task_factory(factory)


async def test_a_delivery_that_does_not_block_runs_at_once() -> None:
    consumer = draining()
    delivered: list[str] = []

    async def callback(message: str) -> str:
        delivered.append(message)
        return message

    with tasks_created() as created:
        suspended = consumer.suspend_flow.wait()
        results = await consumer.wait_first(callback("m0"), suspended)
    assert delivered == ["m0"]
    assert (results.results, results.stopped) == (["m0"], False)
    assert created == []  # Faust's own creates four tasks per record
    assert suspended.cr_frame is None  # closed, not left un-awaited


async def test_a_delivery_that_blocks_finishes_once_unblocked() -> None:
    consumer = draining()
    room = asyncio.Event()
    steps: list[str] = []

    async def callback(message: str) -> str:
        steps.append("started")
        await room.wait()  # a full stream buffer
        steps.append("put")
        return message

    waiting = asyncio.ensure_future(
        consumer.wait_first(callback("m1"), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0)
    assert steps == ["started"] and not waiting.done()
    room.set()
    results = await asyncio.wait_for(waiting, 5)
    assert steps == ["started", "put"]
    assert (results.results, results.stopped) == (["m1"], False)


async def _suspended_while_delivering(consumer: Any, delivery: Any) -> Any:
    """Race ``delivery`` against the flow's suspension as Faust's fetch loop does, let it
    start, then suspend the flow (a rebalance began); ``wait_first``'s result."""
    waiting = asyncio.ensure_future(consumer.wait_first(delivery, consumer.suspend_flow.wait()))
    await asyncio.sleep(0)
    consumer.suspend_flow.set()
    return await asyncio.wait_for(waiting, 5)


async def test_a_blocked_delivery_is_given_up_when_the_flow_is_suspended() -> None:
    consumer = draining()
    room = asyncio.Event()
    outcome: list[str] = []

    async def callback(message: str) -> None:
        try:
            await room.wait()
            outcome.append("delivered")
        except asyncio.CancelledError:
            outcome.append("given up")
            raise

    results = await _suspended_while_delivering(consumer, callback("m2"))
    assert (results.results, results.stopped) == ([True], False)  # the suspension won
    await asyncio.sleep(0)  # the cancelled delivery runs its handler
    assert outcome == ["given up"]
    room.set()
    await asyncio.sleep(0)
    assert outcome == ["given up"]


async def test_other_waits_of_the_consumer_are_faust_s_own() -> None:
    consumer = draining()

    async def slow() -> str:
        await asyncio.sleep(10)
        return "late"

    with tasks_created() as started:
        results = await consumer.wait_first(slow(), timeout=0.01)
    assert (results.done, results.stopped) == ([], True)  # Faust's answer to a timeout
    assert len(started) == 3  # the coroutine, stopped and crashed, each in a task


async def test_an_exception_of_a_delivery_reaches_the_drain() -> None:
    consumer = draining()

    async def callback(message: str) -> None:
        raise ValueError(message)

    suspended = consumer.suspend_flow.wait()
    with pytest.raises(ValueError, match="m3"):
        await consumer.wait_first(callback("m3"), suspended)
    assert suspended.cr_frame is None


def test_a_full_stream_buffer_leaves_the_partition_in_the_fetch() -> None:
    patches.apply()
    active = {TP0}
    consumer = KafkaConsumer.__new__(KafkaConsumer)
    consumer.app = SimpleNamespace(in_recovery=False)
    consumer._active_partitions = active
    consumer._buffered_partitions = set()
    consumer.on_buffer_full(TP0)
    assert active == {TP0} and consumer._buffered_partitions == set()
    consumer.on_buffer_drop(TP0)  # and room again puts nothing back
    assert active == {TP0}
    active.discard(TP0)  # paused since, by a rebalance's recovery or an operator
    consumer.on_buffer_drop(TP0)
    assert active == set()


def test_the_drain_calls_wait_first_as_the_correction_expects() -> None:
    # Correction 5 recognises the record delivery by the call's shape: if the installed Faust
    # calls it otherwise, the correction would silently stop applying.
    source = "".join(inspect.getsource(Consumer._drain_messages).split())
    assert "awaitself.wait_first(callback(message),self.suspend_flow.wait())" in source


async def test_a_delivery_that_blocks_several_times_runs_to_its_end() -> None:
    consumer = draining()
    room = asyncio.Event()
    steps: list[str] = []

    async def callback(message: str) -> str:
        steps.append("decode")
        await asyncio.sleep(0)  # a bare yield
        steps.append("wait")
        await room.wait()  # a future
        await asyncio.sleep(0)
        steps.append("put")
        return message

    waiting = asyncio.ensure_future(
        consumer.wait_first(callback("m4"), consumer.suspend_flow.wait())
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert steps == ["decode", "wait"] and not waiting.done()
    room.set()
    results = await asyncio.wait_for(waiting, 5)
    assert steps == ["decode", "wait", "put"]
    assert results.results == ["m4"]


async def test_a_delivery_given_up_at_a_bare_yield_sees_the_cancellation() -> None:
    consumer = draining()
    outcome: list[str] = []

    async def callback(message: str) -> None:
        try:
            for _ in range(1000):  # busy with a full buffer, yielding to the loop
                await asyncio.sleep(0)
            outcome.append("not given up")
        except asyncio.CancelledError:
            outcome.append("given up")
            raise

    results = await _suspended_while_delivering(consumer, callback("m5"))
    assert results.results == [True]
    for _ in range(1100):
        await asyncio.sleep(0)
    assert outcome == ["given up"]


async def test_a_delivery_to_a_stopped_consumer_is_reported_stopped() -> None:
    consumer = draining()
    consumer._stopped.set()

    async def callback(message: str) -> str:
        return message

    results = await consumer.wait_first(callback("m6"), consumer.suspend_flow.wait())
    assert (results.done, results.stopped) == ([], True)  # as Faust's own answers


async def test_two_coroutines_that_are_not_a_delivery_are_faust_s_own() -> None:
    consumer = draining()
    other = Event()  # not the consumer's suspend_flow

    async def quick() -> str:
        return "done"

    with tasks_created() as started:
        results = await consumer.wait_first(quick(), other.wait())
    assert results.results == ["done"]
    assert len(started) == 4  # both coroutines, stopped and crashed, each in a task


def test_install_is_idempotent() -> None:
    patches.apply()
    patched = Consumer._new_offset
    patches.apply()
    assert Consumer._new_offset is patched


def test_the_conductor_builds_the_buffer_s_callback_for_its_topics() -> None:
    import faust

    patches.apply()
    app = faust.App(
        "buffer-test",
        broker="kafka://127.0.0.1:1",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
    )
    buffer = intake.Buffer(app, ["orders"], limit=10)
    changelog = app.topic("buffer-test-customers-changelog")
    conductor = app.topics  # the conductor
    assert conductor._build_handler(TP("orders", 0), set()) == buffer.deliver
    built = conductor._build_handler(TP(changelog.get_topic_name(), 0), {changelog})
    assert built != buffer.deliver and callable(built)  # Faust's own
