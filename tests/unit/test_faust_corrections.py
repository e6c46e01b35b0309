"""The corrections to Faust (streams.faust_corrections), on its own consumer bookkeeping."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable
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

from streams import faust_corrections

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
    faust_corrections.install()
    # every offset 160..296 processed once and recorded once more (a restore, then a seek)
    consumer = bookkeeping(sorted([*range(160, 297), *range(161, 297)]), committed=160)
    assert consumer._new_offset(TP0) == 297
    consumer._committed_offset[TP0] = 297  # the commit was made
    assert consumer._new_offset(TP0) is None
    assert consumer._acked[TP0] == []
    assert consumer._acked_index[TP0] == set()


def test_a_gap_already_acknowledged_is_counted_once() -> None:
    faust_corrections.install()
    # records 259..330 processed; the gap 260..314 recorded by the seek as well
    consumer = bookkeeping(list(range(259, 331)), committed=259, gaps=((260, 315),))
    assert consumer._new_offset(TP0) == 331
    assert not consumer._gap[TP0]


def test_a_commit_that_did_not_happen_is_made_by_the_next_one() -> None:
    faust_corrections.install()
    consumer = bookkeeping(list(range(10, 20)), committed=10)
    assert consumer._new_offset(TP0) == 20
    # no commit (the committed offset stays 10); more records are acknowledged
    consumer._acked[TP0].extend(range(20, 25))
    assert consumer._new_offset(TP0) == 25


def test_an_unacknowledged_offset_holds_the_commit_back() -> None:
    faust_corrections.install()
    consumer = bookkeeping([100, 101, 101, 104, 105], committed=100)
    assert consumer._new_offset(TP0) == 102
    consumer._committed_offset[TP0] = 102
    assert consumer._new_offset(TP0) is None  # 102 and 103 are not done
    assert consumer._acked[TP0] == [104, 105]
    consumer._acked[TP0].extend([102, 103])
    assert consumer._new_offset(TP0) == 106


def test_a_real_gap_is_still_skipped() -> None:
    faust_corrections.install()
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
    completed = faust_corrections.resumed_after_seek(faust_order)
    done = recovery(generation=3)
    await completed(done, 3)
    assert done.app.consumer.calls == [("seek", frozenset()), ("resume", frozenset({TP0}))]
    assert "resume_partitions" not in vars(done.app.consumer)  # the method is the class's again


async def test_nothing_is_resumed_when_a_rebalance_began() -> None:
    async def rebalanced(self: Any, generation_id: int) -> None:
        await faust_order(self, generation_id)
        self.app.consumer_generation_id = generation_id + 1

    completed = faust_corrections.resumed_after_seek(rebalanced)
    done = recovery(generation=3)
    await completed(done, 3)
    assert done.app.consumer.calls == [("seek", frozenset())]


async def test_an_empty_set_of_active_partitions_fetches_nothing() -> None:
    faust_corrections.install()
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
    faust_corrections.install()
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


def test_install_is_idempotent() -> None:
    faust_corrections.install()
    patched = Consumer._new_offset
    faust_corrections.install()
    assert Consumer._new_offset is patched
