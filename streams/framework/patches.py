"""Corrections to Faust's consumer, so that no input record is skipped, commits keep up, and
a broker that has just restarted does not stop the stream.

1. No partition means none. Faust's fetcher hands aiokafka its live set of active partitions,
   and aiokafka reads an empty collection as "every partition". When the set empties during a
   fetch (a restore from the changelog has just finished and paused its partitions), aiokafka
   returns records of the paused input partitions too, Faust drops them as not active, and
   aiokafka's position has moved past them: seen as a worker that, after a restart, never
   processed the records that were waiting for it. Here aiokafka sees the same live set,
   except that an empty one means no partition.

2. Seek before resuming. When a worker has restored its tables, Faust resumes the input
   partitions and only then seeks them to their committed offsets. Records fetched in between
   are processed, the seek sends the fetcher back, and Faust's record of which offsets were
   delivered and acknowledged no longer matches the partition: offsets acknowledged twice,
   gaps recorded over offsets that were processed, commits that fall behind for minutes (seen
   after every restart from the changelog). Here the input partitions stay paused until Faust
   has sought them.

3. Which offset a commit may reach. Faust records every acknowledged offset of a partition in a
   list and, at each commit, hands the first run of consecutive offsets to the commit. Its own
   version (``Consumer._new_offset``) ends the run at an offset recorded twice (robinhood/faust
   #625 and #559), and removes the run from the list when it is handed over, not when the
   commit is made, so a commit that does not happen loses the run for good. It also let a
   commit pass one offset right after the committed one that was not acknowledged (meant for a
   transaction marker; a record that failed was passed too, and never processed), and its
   record of offsets never delivered covered the record that followed them. Here the list
   keeps every offset from the committed one on, once, and a commit reaches the end of the run
   that starts exactly at the committed offset (with no commit yet: at the first offset
   delivered); offsets count as done when acknowledged or never delivered, as
   ``streams.framework.intake.Positions`` records them exactly (Faust's own record of them is
   not made). Offsets below the committed one are dropped.

4. Not known yet is not zero. Before a table's first write Faust checks that its changelog topic
   has as many partitions as the source topic, reading the consumer's metadata. Right after the
   broker restarted (or the topic was created) the metadata can list the changelog topic with
   no partitions; Faust raised ``PartitionsMismatch`` and the agent stopped for good (seen when
   a worker started while the broker was down). Here a changelog topic listed with no
   partitions is checked again at the next write; a real mismatch still raises.

5. No four tasks per record. Faust hands each fetched record to its streams by racing the
   delivery against the flow being suspended (``Service.wait_first``): four futures, and a
   scheduling round, for every record, to be able to give up a delivery that blocks (a full
   stream buffer) when a rebalance suspends the flow. Almost every delivery completes without
   blocking. Here the delivery runs at once, up to the point where it would block; only a
   delivery that does block is raced against the flow as Faust does, from that point on. What
   is delivered, in which order, and when a blocked delivery is given up are Faust's. (The
   part that runs at once runs in the fetcher's task: Faust's delivery, up to the stream's
   buffer, sets no context variable and keeps no handle on its task.)

6. A full stream buffer holds the delivery, not the fetch. When a stream's buffer was four
   fifths full, Faust took the record's partition out of the fetch until the buffer was down
   to two fifths. The fetch already waiting went on waiting, up to its full second, for the
   partitions still fetched (the paused ones' records were fetched already, so nothing new
   arrived), or, with every partition paused, the fetcher slept a second: a stream that
   cannot keep up with its fetches (a worker with a backlog) stalled at every turn. Its
   resume also put the partition back into the fetch whatever paused it since (a rebalance's
   recovery, which resumes the input only after seeking it, see 2., or an operator's pause).
   Here the partition stays in the fetch, and a delivery into a full buffer waits for room
   (Faust's own wait, given up when a rebalance suspends the flow, see 5.): memory stays
   bounded by the buffer and one fetched batch per partition, since aiokafka fetches no more
   for a partition until its fetched records are taken.

7. Records without events, for the topics a ``streams.framework.intake.Buffer`` takes. The
   conductor's callback for each of their partitions is the buffer's ``deliver``: the
   consumer's message goes into the buffer as it is, without the event, the channel and the
   stream Faust would make it pass through (about half of Faust's cost per record). Every other
   topic (the tables' changelogs) is Faust's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Coroutine, Generator
from typing import Any

from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.conductor import Conductor
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode.services import Service, WaitResults

from streams.framework.intake import buffered_handler

_PATCHED = "_segmenter_corrected"


def next_commit(consumer: Any, tp: Any) -> int | None:
    """The offset the partition's next commit may reach, or None (nothing new to commit)."""
    acked: list[int] = consumer._acked[tp]
    if not acked:
        return None
    done = set(acked)
    gap = consumer._gap[tp]
    overlapping = gap.overlap(0, max(done)) if gap else ()
    if overlapping:
        for interval in overlapping:
            done.update(range(interval.begin, interval.end))
        gap.chop(0, max(done) + 1)
    committed = consumer._committed_offset.get(tp)
    base = committed if committed is not None else _first_delivered(consumer, tp)
    if base is not None:
        done = {offset for offset in done if offset >= base}
        index: set[int] = consumer._acked_index[tp]
        index.difference_update([offset for offset in index if offset < base])
    acked[:] = sorted(done)
    if not acked:
        return None
    start = acked[0]
    if base is not None and start != base:  # the offset the commit must start at is not done
        return None
    end = start
    while end in done:
        end += 1
    return end


def _first_delivered(consumer: Any, tp: Any) -> int | None:
    positions = getattr(consumer, "_segmenter_positions", None)
    return None if positions is None else positions.first.get(tp)


async def no_gap_guess(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    """``Consumer._add_gap``: not made (it covered the delivered record after a jump too);
    ``streams.framework.intake.Positions`` records the offsets never delivered."""


class ActiveOnly:
    """The live set of active partitions as aiokafka's fetcher reads it (``if partitions and
    tp not in partitions``): membership from the set, and never "no filter"."""

    __slots__ = ("live",)

    def __init__(self, live: Container[Any]) -> None:
        self.live = live

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self.live


def resumed_after_seek(
    recovery_completed: Callable[[Any, int], Awaitable[None]],
) -> Callable[[Any, int], Awaitable[None]]:
    """Faust's ``Recovery.on_recovery_completed``, with the input partitions it resumes held
    until it returns (it seeks them in between), and not resumed if a rebalance began."""

    async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        held: list[Any] = []
        consumer.resume_partitions = held.extend
        try:
            await recovery_completed(self, generation_id)
        finally:
            del consumer.resume_partitions  # the class's method again
        if held and self.app.consumer_generation_id == generation_id:
            consumer.resume_partitions(held)

    return on_recovery_completed


class Resumed:
    """The rest of a coroutine that has already run up to an await which blocked (it handed
    ``pending`` to whatever drives it): awaiting this drives it on from there."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                yield pending  # the driving task resumes us once ``pending`` is done
            except BaseException as exc:  # thrown in (a cancellation): to the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(None)
                except StopIteration as stop:
                    return stop.value


def _delivery(consumer: Any, coros: tuple[Any, ...]) -> Coroutine[Any, Any, Any] | None:
    """The record delivery of ``Consumer._drain_messages``, if that is what ``wait_first`` was
    called with: ``(callback(message), consumer.suspend_flow.wait())``."""
    if len(coros) != 2:
        return None
    delivery, suspended = coros
    frame = getattr(suspended, "cr_frame", None)
    if frame is None or frame.f_locals.get("self") is not consumer.suspend_flow:
        return None
    return delivery if hasattr(delivery, "send") else None


async def deliver_first(self: Any, *coros: Any, timeout: Any = None) -> WaitResults:
    """``Consumer.wait_first``: a record's delivery runs at once, and is raced against the
    flow being suspended (Faust's ``wait_first``) only if it blocks."""
    delivery = _delivery(self, coros) if timeout is None else None
    if delivery is None:
        return await Service.wait_first(self, *coros, timeout=timeout)
    suspended = coros[1]
    try:
        pending = delivery.send(None)
    except StopIteration as done:  # delivered without blocking: the usual case
        suspended.close()  # never started
        if self._stopped.is_set() or self._crashed.is_set():
            return WaitResults([], [], True)
        return WaitResults([delivery], [done.value], False)
    except BaseException:
        suspended.close()
        raise
    return await Service.wait_first(self, Resumed(delivery, pending), suspended)


def keep_fetching(self: Any, tp: Any) -> None:
    """``Consumer.on_buffer_full``: the partition stays in the fetch (see 6.)."""


def apply() -> None:
    """Apply the corrections to Faust (once per process; ``streams.framework.install`` checks
    the versions first)."""
    if getattr(Consumer, _PATCHED, False):
        return
    Consumer._new_offset = next_commit  # type: ignore[method-assign,assignment]
    Consumer._add_gap = no_gap_guess  # type: ignore[method-assign]
    Consumer.wait_first = deliver_first  # type: ignore[method-assign]
    Consumer.on_buffer_full = keep_fetching  # type: ignore[method-assign]
    faust_fetch = AIOKafkaConsumerThread._fetch_records

    async def _fetch_records(
        self: AIOKafkaConsumerThread,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        if active_partitions is not None:  # None: a client without a group, every partition
            active_partitions = ActiveOnly(active_partitions)
        return await faust_fetch(
            self, consumer, active_partitions, timeout=timeout, max_records=max_records
        )

    AIOKafkaConsumerThread._fetch_records = _fetch_records  # type: ignore[method-assign]
    Recovery.on_recovery_completed = resumed_after_seek(  # type: ignore[method-assign]
        Recovery.on_recovery_completed
    )
    faust_build = Conductor._build_handler

    def _build_handler(self: Conductor, tp: Any, channels: Any) -> Any:
        return buffered_handler(self, tp) or faust_build(self, tp, channels)

    Conductor._build_handler = _build_handler  # type: ignore[method-assign]
    faust_verify = Collection._verify_source_topic_partitions

    def _verify_source_topic_partitions(self: Collection, source_topic: str) -> None:
        if self.app.consumer.topic_partitions(self.changelog_topic_name) == 0:
            return  # not in the metadata yet: checked again at the next write
        faust_verify(self, source_topic)

    Collection._verify_source_topic_partitions = _verify_source_topic_partitions  # type: ignore[method-assign]
    setattr(Consumer, _PATCHED, True)
