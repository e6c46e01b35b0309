"""The commit protocol: a batch of input records is processed, then written in one order that
never leaves a state without its transitions, nor an offset committed before its effects.

Records come in batches (``Checkpoint.run``): each record is decided on its own, in order; its
transitions are staged in the sink until the end of the batch, then sent together. The batch's
state changes wait in an overlay (so later records of the same customer see them) until the
batch is committed (``commit``), in four steps:

1. the broker acknowledges every transition of the batch (and its dead letters and receipts);
2. each changed customer is written once to the table (one changelog record per customer);
3. Redis gets each customer's figures while the changelog records are sent, and both are
   acknowledged;
4. the batch's input offsets are acknowledged (``written``), so they can be committed.

A crash anywhere before step 4 leaves the offsets uncommitted: the records are processed again
and, being idempotent, give the same state and the same transition ids.

With the segment insights on, step 2 first adds up the batch's activity records
(``streams.insights``) and waits for their changelog records: the customers' states, which
say an order was applied, come after what the insights counted of it (a record added up again
after a crash counts once: the insights keep the ids they applied).

A batch's commit goes on while the next batch is processed (one batch is committed at a time,
in order; the processing gives the event loop a turn every ``RECORDS_PER_TURN`` records): the
next batch reads the states of the batch being committed from its overlay until they are in
the table.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from models.events import Metrics
from models.insights import Activity
from models.state import CustomerState
from streams.codecs import Judged, encode_stored
from streams.dlq import SourceRecord
from streams.failures import RecordFailed, backoff, disk_full
from streams.sink import TransitionSink

log = logging.getLogger(__name__)

# Records of a batch processed between two turns of the event loop: the last batch's commit
# (acknowledgements, Redis replies), the fetcher and the producer go on while a batch is
# processed, instead of waiting for its end. Each step of a commit waits for a turn: with 64
# records per turn a commit outlasted the next batch's processing, which then waited for it
# about a tenth of the time (bench/NOTES.md).
RECORDS_PER_TURN = 16

Row = tuple[int, bytes, bytes]  # (partition, key, value)
Handler = Callable[[SourceRecord], Awaitable[None]]


class Store(Protocol):
    """A table of the worker's partitions (``streams.framework.tables.TableStore``)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def put_many(self, rows: Sequence[Row]) -> None: ...

    def delete(self, key: bytes) -> None: ...

    async def durable(self) -> None: ...


class Cache(Protocol):
    """The Redis copy (``streams.redis_cache.RedisCache``)."""

    async def write(self, items: Sequence[tuple[CustomerState, Metrics]]) -> None: ...

    async def remove(
        self, shop_id: str, customer_id: str, partition: int | None = None
    ) -> bool: ...


class Insights(Protocol):
    """The segment insights (``streams.insights.tables.Insights``): ``rows`` computes what a
    batch's activity records change, ``write`` writes it (the same rows if tried again)."""

    def rows(self, activity: Sequence[tuple[int, Activity]]) -> Any: ...

    def write(self, rows: Any) -> None: ...

    async def durable(self) -> None: ...


class Status(enum.Enum):
    PROCESSING = "processing"  # records are being decided
    PROCESSED = "processed"  # every record decided; waiting for the previous commit
    COMMITTING = "committing"  # the four steps are under way
    COMMITTED = "committed"  # offsets acknowledged
    FAILED = "failed"  # processing or a write failed: nothing of it is acknowledged


@dataclass
class Change:
    """A customer's newest state in a batch, not written yet."""

    partition: int
    state: CustomerState
    due: datetime | None
    changed: bool  # differs from the table's (else only Redis is written again)
    # What Redis gets once the state is written (None: no consent, Redis holds nothing about
    # the customer), computed with the state: the evaluation that decided it has them at hand.
    figures: Metrics | None
    emitted_at: datetime | None = None
    # The churn-risk crossing still ahead (``streams.churn_layer``), stored beside ``due``,
    # and the model and verdict the churn risk was judged with.
    churn: datetime | None = None
    judged: Judged | None = None
    _stored: bytes | None = field(default=None, repr=False)

    def stored(self) -> bytes:
        """The table value (encoded once)."""
        if self._stored is None:
            self._stored = encode_stored(
                self.partition, self.state, self.due, self.churn, self.judged
            )
        return self._stored


@dataclass
class Batch:
    """A batch's overlay of changed customers and the deliveries its commit waits for."""

    status: Status = Status.PROCESSING
    changes: dict[str, Change] = field(default_factory=dict)
    deliveries: list[Any] = field(default_factory=list)
    # the activity records of its records (with their partitions), for the insights
    activity: list[tuple[int, Activity]] = field(default_factory=list)


class Checkpoint:
    """Runs batches and commits them (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        sink: TransitionSink,
        on_write_failed: Callable[[BaseException], None] = lambda _exc: None,
        insights: Insights | None = None,
    ) -> None:
        self.store = store
        self.insights = insights
        self.cache = cache
        self.sink = sink
        # Told at once when a commit fails (the broker refused its transitions or its
        # changelog records after the producer's own retries): its offsets stay unacknowledged.
        self.on_write_failed = on_write_failed
        self._running: Batch | None = None
        # The previous batch while it is being committed, and the task committing it.
        self._committing: Batch | None = None
        self._committer: asyncio.Task[None] | None = None
        # The local store could not be written for lack of space: the commit waits and tries
        # again (``/readyz`` answers 503 meanwhile) instead of failing.
        self.disk_full = False
        self.wait: Callable[[float], Awaitable[Any]] = asyncio.sleep

    async def run(
        self,
        items: Sequence[tuple[SourceRecord, Handler]],
        activate: Callable[[int], None],
        written: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Process records in order, then start the batch's commit. ``activate(i)`` makes
        record ``i`` the current stream event, which decides the table partition of writes
        through the table's own API.

        Returns once the records are processed and the previous batch's commit is done: this
        batch's commit goes on while the caller collects the next batch. ``written`` (step 4)
        is awaited once the batch is durable. A failed commit is raised by the next call, or by
        ``drain``."""
        self._running = batch = Batch()
        try:
            for index, (record, handler) in enumerate(items):
                if index and not index % RECORDS_PER_TURN:
                    await asyncio.sleep(0)  # the last batch's commit, the fetcher, the producer
                activate(index)
                try:
                    await handler(record)
                except Exception as exc:  # the batch is processed again (streams.failures)
                    raise RecordFailed(index, record, exc) from exc
        except BaseException:  # stopped or failed: processed again, its transitions with it
            batch.status = Status.FAILED
            self.sink.discard()
            raise
        finally:
            self._running = None
        batch.status = Status.PROCESSED
        if self._committing is not None:
            # The last batch's transitions acknowledged before this batch's are sent: if the
            # broker refuses one, none that follows it for the customer goes out before it.
            await asyncio.gather(*self._committing.deliveries)
        batch.deliveries += await self.sink.flush()  # the batch's transitions
        batch.activity += self.sink.take_activity()
        await self.drain()  # one batch's commit at a time, in order
        self._committing = batch
        self._committer = committer = asyncio.create_task(self.commit(batch, written))
        committer.add_done_callback(self._committer_done)

    async def commit(
        self, batch: Batch, written: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """The protocol, steps 1 to 4 (see the module docstring), once per processed batch."""
        if batch.status is not Status.PROCESSED:
            raise RuntimeError(
                f"only a processed batch is committed, not a {batch.status.value} one"
            )
        batch.status = Status.COMMITTING
        try:
            try:
                await self._write(batch)  # steps 1 to 3
            finally:
                if self._committing is batch:
                    self._committing = None
            if written is not None:
                await written()  # 4. the offsets
        except BaseException:
            batch.status = Status.FAILED
            raise
        batch.status = Status.COMMITTED

    async def _write(self, batch: Batch) -> None:
        if not (batch.changes or batch.deliveries or batch.activity):
            return
        changes = batch.changes
        # 1. Transitions, dead letters and receipts acknowledged: never a state without them.
        await asyncio.gather(*batch.deliveries)
        # 2a. The insights: what the batch's records add up to, in their changelogs first.
        if batch.activity and self.insights is not None:
            insights = self.insights
            rows = insights.rows(batch.activity)
            await self._retrying(lambda: insights.write(rows))
            await insights.durable()
        batch.activity = []
        # 2. The table: each changed customer once (an unchanged one goes to Redis only: a
        # record processed again after a crash finds its effect in the table while the crash
        # may have lost its Redis write).
        writes = []
        for change in changes.values():
            state = change.state
            if change.figures is None:  # no consent: Redis holds nothing about them
                # a failed removal is stored in the partition's erasures table, made
                # durable with the changelog records below
                await self.cache.remove(state.shop_id, state.customer_id, change.partition)
            else:
                writes.append((state, change.figures))
        rows = [(c.partition, key.encode(), c.stored()) for key, c in changes.items() if c.changed]
        await self._retrying(lambda: self.store.put_many(rows))
        # In the table now: later batches read the states from there. (Not emptied before:
        # until now the next batch, processed meanwhile, reads them from ``changes``.)
        batch.changes, batch.deliveries = {}, []
        # 3. Redis and the changelog at once, in any order: a crash in between leaves the
        # offsets uncommitted and the replayed records write Redis again. The changelog holds
        # the batch before its offsets are acknowledged: a crash after that replays nothing,
        # so the states must not be only in the local store.
        await asyncio.gather(self.cache.write(writes), self.store.durable())

    async def _retrying(self, write: Callable[[], None]) -> None:
        """A write of step 2; on a full disk, tried again with a backoff until there is room
        (a worker that exits instead deletes its store at the restart and fills the disk again
        with its rebuild). The rows are the same at every attempt: written twice, nothing
        changes."""
        attempt = 1
        while True:
            try:
                write()
            except Exception as exc:
                if not disk_full(exc):
                    raise
                attempt += 1
                if not self.disk_full:
                    log.error("the local store's disk is full: writes wait for room: %s", exc)
                self.disk_full = True
                await self.wait(backoff(attempt))
                continue
            if self.disk_full:
                log.warning("the local store's disk has room again: writes go on")
            self.disk_full = False
            return

    def _committer_done(self, committer: asyncio.Task[None]) -> None:
        """A failed commit is reported at once: the next batch may be long in coming (the
        broker that refused it may also be what keeps the next one from arriving)."""
        if committer.cancelled() or (exc := committer.exception()) is None:
            return
        log.error("writing a batch failed: its offsets stay unacknowledged", exc_info=exc)
        self.on_write_failed(exc)

    async def drain(self) -> None:
        """Wait until the batch being committed is committed; raise its error."""
        committer = self._committer
        if committer is None:
            return
        try:
            await asyncio.shield(committer)  # a cancelled caller leaves the commit to finish
        finally:
            if committer.done() and self._committer is committer:
                self._committer = None

    async def write_running(self) -> None:
        """Steps 1 to 3 for the running batch so far, after the batch being committed (what
        follows, an erasure, must come after every earlier change of the customer).

        A failure stops the worker (``on_write_failed``), as a failed commit does: the local
        tables may then hold rows whose changelog records never arrived, and the batch
        processed again in place would find its effects there and send them no more."""
        await self.drain()
        batch = self._running
        if batch is not None:
            try:
                batch.deliveries += await self.sink.flush()
                batch.activity += self.sink.take_activity()
                await self._write(batch)
            except Exception as exc:
                self.on_write_failed(exc)
                raise

    # -- the overlay ----------------------------------------------------------------------------

    def staged(self, key: str) -> CustomerState | None:
        """The customer's state in the running batch, else in the one being committed."""
        for batch in (self._running, self._committing):
            if batch is not None and (change := batch.changes.get(key)) is not None:
                return change.state
        return None

    def staged_changes(self) -> Iterator[Change]:
        """Every change not in the table yet (running batch and the one being committed)."""
        for batch in (self._running, self._committing):
            if batch is not None:
                yield from batch.changes.values()

    def stage(self, key: str, change: Change) -> None:
        """Put the customer's newest state in the running batch (after its transitions, which
        the sink holds)."""
        batch = self._running
        if batch is None:
            raise RuntimeError("customer states change only inside Checkpoint.run")
        earlier = batch.changes.get(key)
        if earlier is not None and earlier.changed:
            change.changed = True
        batch.changes[key] = change

    def earlier_emission(self, key: str) -> datetime | None:
        """The emission time of the running batch's last change of the customer, if any."""
        batch = self._running
        change = batch.changes.get(key) if batch is not None else None
        return change.emitted_at if change is not None else None

    def track(self, delivery: Any) -> None:
        """A record sent for the running batch (a dead letter, an erasure receipt): the batch's
        offsets are acknowledged only once the broker has acknowledged it too."""
        if self._running is None:
            raise RuntimeError("records are processed only inside Checkpoint.run")
        if delivery is not None:
            self._running.deliveries.append(delivery)
