"""Corrections to Faust, so that no input record is skipped, commits keep up, and a broker
that has just restarted does not stop the stream.

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
   commit is made, so a commit that does not happen loses the run for good. Here the list keeps
   every offset from the committed one on, once, and a commit may reach the end of the run that
   starts at the committed offset (or right after it: Faust lets a single offset that is never
   delivered, like a transaction marker, be skipped). Offsets below the committed one are
   dropped. Which offsets count as done (acknowledged, or in a gap Faust recorded) is Faust's.

4. Not known yet is not zero. Before a table's first write Faust checks that its changelog topic
   has as many partitions as the source topic, reading the consumer's metadata. Right after the
   broker restarted (or the topic was created) the metadata can list the changelog topic with
   no partitions; Faust raised ``PartitionsMismatch`` and the agent stopped for good (seen when
   a worker started while the broker was down). Here a changelog topic listed with no
   partitions is checked again at the next write; a real mismatch still raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container
from typing import Any

from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

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
    committed = consumer._committed_offset[tp]
    if committed:
        done = {offset for offset in done if offset >= committed}
        index: set[int] = consumer._acked_index[tp]
        index.difference_update([offset for offset in index if offset < committed])
    acked[:] = sorted(done)
    if not acked:
        return None
    start = acked[0]
    if committed and start - committed > 1:  # an offset after the committed one is not done
        return None
    end = start
    while end in done:
        end += 1
    return end


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


def install() -> None:
    """Apply the corrections to Faust (once per process)."""
    if getattr(Consumer, _PATCHED, False):
        return
    Consumer._new_offset = next_commit  # type: ignore[method-assign,assignment]
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
    faust_verify = Collection._verify_source_topic_partitions

    def _verify_source_topic_partitions(self: Collection, source_topic: str) -> None:
        if self.app.consumer.topic_partitions(self.changelog_topic_name) == 0:
            return  # not in the metadata yet: checked again at the next write
        faust_verify(self, source_topic)

    Collection._verify_source_topic_partitions = _verify_source_topic_partitions  # type: ignore[method-assign]
    setattr(Consumer, _PATCHED, True)
