"""The per-event work of the worker: read the record, call the core, write the results.

One ``Processor`` serves the orders topic and the internal clock topic. It holds no business
logic: decisions come from ``models.transitions``; this module decodes, routes rejects to the
dead-letter topic, stores state, publishes transitions, caches in Redis and keeps the due index.

Records come in batches (``on_batch``): each record is decided on its own, in order; its
transitions wait in the outbox until the end of the batch, and are then sent together (one
producer batch per topic partition). The batch's state changes wait in an overlay (so later
records of the same customer see them) until the broker has acknowledged every transition of
the batch. Then each changed customer is written once to the table (one changelog record per
customer per batch, sent together as well) and, at the same time, once to Redis (one script
call per 500 customers); once both are acknowledged, the batch's offsets are. A crash before
that leaves the batch's offsets uncommitted: the records are processed again and, being
idempotent, give the same state and the same transition ids.

A batch's writes go on while the next batch is processed (one batch at a time is being
written, in order; the processing gives the event loop a turn every ``RECORDS_PER_TURN``
records): the next batch reads the states of the batch being written from its
overlay until they are in the table.

Clock ticks are the way work that does not come from an order reaches a customer's partition
(so the table is only ever written inside stream iteration): ``due`` ticks when a due time
passes (wall clock), ``reevaluate`` ticks after a new calibration or rule set. A due time
passes for a partition only once its orders up to that instant have been read (``read_until``):
a worker behind its input (after a restart, a stop, a burst) would otherwise find a customer
inactive whose order is still waiting in the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import orjson
from aiokafka.partitioner import DefaultPartitioner

from models.due import next_due, remember_due
from models.events import Transition
from models.fold import (
    OrderRejected,
    apply_consent,
    apply_order,
    due_transitions,
    erase,
    reevaluate,
)
from models.privacy import consented, erasure_marker, pseudonym
from models.rules import SegmentRules
from models.scoring import Calibration
from models.segment_model import (
    SegmentModel,
    bootstrap_calibration,
    current_metrics,
    needs_reevaluation,
)
from models.state import CustomerState, compute_metrics, state_key
from streams.clock import DueIndex
from streams.codecs import (
    DecodeError,
    decode_consent,
    decode_erasure,
    decode_header,
    decode_order,
    decode_stored,
    decode_stored_due,
    encode_stored,
    encode_transition,
)
from streams.dlq import DeadLetters, SourceRecord
from streams.metrics import WorkerMetrics
from streams.outbox import nothing_held
from streams.redis_cache import RedisCache

log = logging.getLogger(__name__)

# Wall clock: an orders partition whose offsets say records are waiting but none has been
# processed for this long is taken as read (nothing comes: transaction markers at the log's
# end, or fetching paused), so its due times pass by the wall clock again.
STALLED_SECONDS = 30.0
# Every this many order records (by offset), the worker checks that the record is in the
# partition Kafka's default partitioner gives its key; a warning at most this often.
PARTITION_CHECK_EVERY = 64
MISROUTED_LOG_SECONDS = 60.0

TickKind = Literal["due", "reevaluate"]

# Records of a batch processed between two turns of the event loop: the last batch's writes
# (acknowledgements, Redis replies), the fetcher and the producer go on while a batch is
# processed, instead of waiting for its end.
RECORDS_PER_TURN = 64
E = TypeVar("E")
Handler = Callable[[SourceRecord], Awaitable[None]]


@dataclass
class _Change:
    """A customer's newest state in the running batch, not written yet."""

    partition: int
    state: CustomerState
    record: int  # index of the batch record that made it (the table write happens as of it)
    emitted_at: datetime | None
    due: datetime | None
    changed: bool  # differs from the table's (else only Redis is written again)
    # What Redis gets once the state is written (None: no consent, Redis holds nothing about
    # the customer), computed with the state: the evaluation that decided it has them at hand.
    figures: Any

    def stored(self) -> bytes:
        """The table value."""
        return encode_stored(self.partition, self.state, self.due)


@dataclass
class _Batch:
    """The running batch: records are processed one by one, writes wait for the acks."""

    activate: Callable[[int], None]  # make record i the current event (table partition)
    current: int = 0
    changes: dict[str, _Change] = field(default_factory=dict)
    deliveries: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Outputs:
    """Where transitions go: every one to ``transitions``; to the marketing topic of its type
    unless it is a backfill (and backfills are kept off) or its cause is kept off. Erasure
    receipts go to ``receipts``."""

    transitions: Any
    marketing: Mapping[str, Any]
    backfill: bool
    marketing_skip_backfill: bool
    marketing_skip_causes: frozenset[str] = frozenset()
    receipts: Any = None
    # Sends what the topics hold back (a topic's ``send`` returns None then) and returns the
    # delivery futures; topics that send at once return their futures from ``send``.
    dispatch: Callable[[], Awaitable[list[Any]]] = nothing_held
    # Drops what the topics hold back (a batch that is processed again).
    discard: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Privacy:
    """The consent policy and the pseudonymisation secret."""

    consent_required: bool = False
    secret: bytes | None = None

    def identify(self, event: E) -> E:
        """The event with the customer id replaced by its pseudonym, if a secret is set."""
        if self.secret is None:
            return event
        alias = pseudonym(self.secret, event.shop_id, event.customer_id)  # type: ignore[attr-defined]
        return event.model_copy(update={"customer_id": alias})  # type: ignore[attr-defined]


class Processor:
    """Applies order events and clock ticks to the customer table."""

    def __init__(
        self,
        *,
        table: MutableMapping[bytes, bytes],
        erasures: MutableMapping[bytes, bytes],
        rules: SegmentRules,
        calibrations: Mapping[str, Calibration],
        outputs: Outputs,
        dead_letters: DeadLetters,
        cache: RedisCache,
        clock_mode: Literal["wall", "event"],
        metrics: WorkerMetrics,
        privacy: Privacy = Privacy(),
        table_durable: Callable[[], Awaitable[None]] | None = None,
        read: Callable[[int, bytes], bytes | None] | None = None,
        read_erasure: Callable[[int, bytes], bytes | None] | None = None,
        write: Callable[[list[tuple[int, bytes, bytes]]], None] | None = None,
        on_write_failed: Callable[[BaseException], None] | None = None,
        input_end: Callable[[int], tuple[int, int | None] | None] | None = None,
        partitions: int | None = None,
    ) -> None:
        self.table = table
        # Reads a key of one partition of the table (the store's fast path if it has one).
        self.read = read or (lambda _partition, key: table.get(key))
        self.read_erasure = read_erasure or (lambda _partition, key: erasures.get(key))
        # Writes (partition, key, value) rows to the table, as of records of those partitions
        # (the store's fast path if it has one); None: one table assignment per key, with a
        # record of the batch that made it as the current event.
        self.write = write
        # Told at once when a batch's writes fail (the broker refused its transitions or its
        # changelog records after the producer's own retries): its offsets stay unacknowledged.
        self.on_write_failed = on_write_failed or (lambda _exc: None)
        # Wall clock: (end offset, committed offset) of an orders partition as the consumer
        # knows them, None while it does not; None: no such knowledge, the input counts as read.
        self.input_end = input_end
        # Orders partition -> (next offset, timestamp, monotonic time) of the last one processed.
        self._read: dict[int, tuple[int, float | None, float]] = {}
        # Orders partition -> monotonic time since which it was found waiting with none read.
        self._waiting: dict[int, float] = {}
        # The orders topic's partitions (None: records are not checked against the partitioner).
        self.partitions = partitions
        self._partitioner = DefaultPartitioner()
        self._misrouted_logged = float("-inf")
        self.erasures = erasures
        self.privacy = privacy
        # Waits until the table's changelog writes so far are acknowledged by the broker.
        self.table_durable = table_durable or _nothing
        self.rules = rules
        self.calibrations = dict(calibrations)
        self.outputs = outputs
        self.dead_letters = dead_letters
        self.cache = cache
        self.clock_mode = clock_mode
        self.metrics = metrics
        self.index = DueIndex()
        # Wall clock: due ticks sent and not processed yet (key -> due time).
        self.in_flight: dict[str, datetime] = {}
        # Customers in the table of this worker's partitions.
        self.customers = 0
        self.counts: Counter[str] = Counter()
        self._models: dict[str, SegmentModel] = {}
        # (partition, key) of customers to re-evaluate, handed out as ticks by the clock timer.
        self.pending_reevaluation: list[tuple[int, str]] = []
        self._batch: _Batch | None = None
        # The previous batch while its writes are under way, and the task writing it.
        self._writing: _Batch | None = None
        self._writer: asyncio.Task[None] | None = None

    def model_for(self, shop_id: str) -> SegmentModel:
        model = self._models.get(shop_id)
        if model is None:
            quantile = self.rules.scoring.mode == "quantile"
            calibration = (self.calibrations.get(shop_id) if quantile else None) or (
                bootstrap_calibration(self.rules, shop_id)
            )
            model = self._models[shop_id] = SegmentModel(
                self.rules, calibration, consent_required=self.privacy.consent_required
            )
        return model

    async def set_calibration(self, calibration: Calibration) -> bool:
        """Adopt a shop's newer calibration; True if adopted (its customers get re-evaluated).

        Older or equal calibrations (a replay of the compacted topic) are ignored; in fixed
        mode none is adopted.
        """
        if self.rules.scoring.mode != "quantile":
            return False
        current = self.calibrations.get(calibration.shop_id)
        if current is not None and _not_newer(calibration, current):
            return False
        self.calibrations[calibration.shop_id] = calibration
        self._models.pop(calibration.shop_id, None)
        log.info(
            "calibration %s of shop %s adopted (%d customers)",
            calibration.version,
            calibration.shop_id,
            calibration.customers,
        )
        self.pending_reevaluation += await self._stale_customers(calibration.shop_id)
        return True

    # -- inputs -------------------------------------------------------------------------------

    async def on_batch(
        self,
        items: Sequence[tuple[SourceRecord, Handler]],
        activate: Callable[[int], None],
        written: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Process records in order, then hand the batch's state changes to a writer (see the
        module docstring). ``activate(i)`` makes record ``i`` the current stream event, which
        decides the table partition of reads and writes.

        Returns once the records are processed and the previous batch's writes are done: this
        batch's writes go on while the caller collects the next batch and this processor
        works through it (reading this batch's states until they are in the table). Once they
        are durable, ``written`` is awaited (the caller acknowledges the batch's offsets then).
        A failed write is raised by the next call, or by ``drain``."""
        self._batch = batch = _Batch(activate)
        try:
            for index, (record, handler) in enumerate(items):
                if index and not index % RECORDS_PER_TURN:
                    await asyncio.sleep(0)  # the last batch's writes, the fetcher, the producer
                batch.current = index
                activate(index)
                await handler(record)
        except BaseException:  # stopped or failed: processed again, its transitions with it
            self.outputs.discard()
            raise
        finally:
            self._batch = None
        if self._writing is not None:
            # The last batch's transitions acknowledged before this batch's are sent: if the
            # broker refuses one, none that follows it for the customer goes out before it.
            await asyncio.gather(*self._writing.deliveries)
        batch.deliveries += await self.outputs.dispatch()  # the batch's transitions
        await self.drain()  # one batch's writes at a time, in order
        self._writing = batch
        self._writer = writer = asyncio.create_task(self._write_batch(batch, written))
        writer.add_done_callback(self._writer_done)

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        """A failed write is reported at once: the next batch may be long in coming (the
        broker that refused it may also be what keeps the next one from arriving)."""
        if writer.cancelled() or (exc := writer.exception()) is None:
            return
        log.error("writing a batch failed: its offsets stay unacknowledged", exc_info=exc)
        self.on_write_failed(exc)

    async def drain(self) -> None:
        """Wait until the batch being written is written and acknowledged; raise its error."""
        writer = self._writer
        if writer is None:
            return
        try:
            await asyncio.shield(writer)  # a cancelled caller leaves the writes to finish
        finally:
            if writer.done() and self._writer is writer:
                self._writer = None

    async def _write_batch(
        self, batch: _Batch, written: Callable[[], Awaitable[None]] | None
    ) -> None:
        try:
            await self._write_changes(batch)
        finally:
            if self._writing is batch:
                self._writing = None
        if written is not None:
            await written()

    async def _flush_batch(self) -> None:
        """Write the running batch so far, after the batch being written."""
        await self.drain()
        if self._batch is not None:
            self._batch.deliveries += await self.outputs.dispatch()
            await self._write_changes(self._batch)

    async def _write_changes(self, batch: _Batch) -> None:
        """Wait for the broker to acknowledge the batch's transitions, then write every changed
        customer once to the table and once to Redis, and wait for both: Redis, and the
        broker's acknowledgement of the table's changelog records."""
        if not (batch.changes or batch.deliveries):
            return
        changes = batch.changes
        await asyncio.gather(*batch.deliveries)
        writes = []
        for change in changes.values():
            state = change.state
            if change.figures is None:  # no consent: Redis holds nothing about them
                await self.cache.remove(state.shop_id, state.customer_id)
            else:
                writes.append((state, change.figures))
        changed = [(key.encode(), change) for key, change in changes.items() if change.changed]
        if self.write is not None:
            self.write([(change.partition, key, change.stored()) for key, change in changed])
        else:
            for key, change in changed:
                batch.activate(change.record)
                self.table[key] = change.stored()
            batch.activate(batch.current)
        # In the table now: later batches read the states from there. (Not emptied before:
        # until now the next batch, processed meanwhile, reads them from ``changes``.)
        batch.changes, batch.deliveries = {}, []
        # Redis and the changelog at once, in any order: a crash in between leaves the batch's
        # offsets uncommitted, and its replayed records write Redis again even where the table
        # already holds their effect (see _save). The changelog holds the batch before its
        # offsets are acknowledged: a crash after that replays nothing, so the states must not
        # be only in the local store.
        await asyncio.gather(self.cache.write(writes), self.table_durable())

    async def on_order(self, record: SourceRecord) -> None:
        """One record of the orders topic; a record that cannot be used is dead-lettered."""
        with self.metrics.processing.time():
            await self._on_order(record)
        if self.input_end is not None:  # wall clock: how far the partition is read
            self._read[record.partition] = (record.offset + 1, record.timestamp, time.monotonic())
        if self.partitions and record.offset % PARTITION_CHECK_EVERY == 0 and record.key:
            self._check_partition(record, list(range(self.partitions)))

    def _check_partition(self, record: SourceRecord, partitions: list[int]) -> None:
        """Count (and log, at most once a minute) an order record in another partition than
        Kafka's default partitioner (murmur2, the Java client's and aiokafka's) gives its key:
        the consent and erasure requests keyed the same way land where the customer's state is
        only if the shop's producers partition like that (librdkafka's default does not)."""
        expected = self._partitioner(record.key, partitions, partitions)
        if expected == record.partition:
            return
        self.counts["misrouted"] += 1
        self.metrics.misrouted.inc()
        now = time.monotonic()
        if now - self._misrouted_logged >= MISROUTED_LOG_SECONDS:
            self._misrouted_logged = now
            log.warning(
                "order record at %s[%d]@%d is in partition %d, Kafka's default partitioner "
                "gives its key partition %d: producers must partition by murmur2 of the key "
                "(librdkafka clients: partitioner=murmur2_random), or erasure and consent "
                "requests miss the customer's state",
                record.topic,
                record.partition,
                record.offset,
                record.partition,
                expected,
                extra={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )

    async def _on_order(self, record: SourceRecord) -> None:
        order = await self._decoded(record, decode_order)
        if order is None:
            return
        partition = record.partition
        try:
            if self.clock_mode == "event":
                now = self.index.advance_watermark(partition, order.occurred_at)
                await self._fire_due(partition, now)
            state = self._load(state_key(order.shop_id, order.customer_id), partition)
            if state is None and self._erased(order.shop_id, order.customer_id, partition):
                # Erased: a fresh state only after consent is given again. Counted, logged.
                self.counts["skipped_erased"] += 1
                log.info(
                    "order of an erased customer skipped at %s[%d]@%d",
                    record.topic,
                    partition,
                    record.offset,
                    extra={"topic": record.topic, "partition": partition, "offset": record.offset},
                )
                return
            new_state, transitions = apply_order(state, order, self.model_for(order.shop_id))
        except OrderRejected as exc:
            await self._dead_letter(record, exc.reason, str(exc))
            return
        except Exception as exc:  # a bug on one record must not stop the stream: park it, loudly
            log.exception(
                "processing %s[%d]@%d failed",
                record.topic,
                partition,
                record.offset,
                extra={"topic": record.topic, "partition": partition, "offset": record.offset},
            )
            await self._dead_letter(record, "processing_error", repr(exc))
            return
        if order.type != "order_placed":
            kept = new_state.orders.get(order.order_id)
            if kept is not None and kept.placed_at is None and new_state is not state:
                self._unmatched(record, order.type, order.order_id)
        await self._save(partition, new_state, transitions, previous=state)

    def _unmatched(self, record: SourceRecord, kind: str, order_id: str) -> None:
        """A cancellation or refund of an order not seen yet: it waits in the state for its
        order (events can arrive out of order); counted and logged, since a wrong order_id or
        shop_id would otherwise wait unnoticed for ever."""
        self.counts[f"unmatched_{kind}"] += 1
        self.metrics.labelled(self.metrics.unmatched, kind).inc()
        log.info(
            "%s of order %s, which the customer's state does not hold (yet), at %s[%d]@%d",
            kind,
            order_id,
            record.topic,
            record.partition,
            record.offset,
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        )

    async def on_consent(self, record: SourceRecord) -> None:
        """One record of the consent topic."""
        event = await self._decoded(record, decode_consent)
        if event is None:
            return
        state = self._load(state_key(event.shop_id, event.customer_id), record.partition)
        if event.type == "consent_granted":
            self.erasures.pop(self._marker(event.shop_id, event.customer_id), None)
        elif state is None and self._erased(event.shop_id, event.customer_id, record.partition):
            return  # erased: nothing to withdraw from, and nothing to store
        new_state, transitions = apply_consent(state, event, self.model_for(event.shop_id))
        await self._save(record.partition, new_state, transitions, previous=state)

    async def on_erasure(self, record: SourceRecord) -> None:
        """One record of the erasure topic: delete every copy we hold, then send a receipt."""
        event = await self._decoded(record, decode_erasure)
        if event is None:
            return
        # Deletes are not batched: the batch so far is written first, so the erasure follows
        # every earlier change of the customer.
        await self._flush_batch()
        key = state_key(event.shop_id, event.customer_id)
        state = self._load(key, record.partition)
        if state is not None:
            await self._send(erase(state, event, self.model_for(event.shop_id)), force=True)
            del self.table[key.encode()]  # a tombstone on the compacted changelog
            self.customers -= 1
        self.index.schedule(record.partition, key, None)
        self.in_flight.pop(key, None)
        self.pending_reevaluation = [p for p in self.pending_reevaluation if p[1] != key]
        cache_removed = await self.cache.remove(event.shop_id, event.customer_id)
        self.erasures[self._marker(event.shop_id, event.customer_id)] = (
            event.occurred_at.isoformat().encode()
        )
        # The tombstone and the erasure marker reach the changelog before the erasure's offset
        # can be committed: a crash after that must not bring the customer back.
        await self.table_durable()
        receipt = {
            "type": "erasure_completed",
            "request_id": event.request_id,
            "shop_id": event.shop_id,
            "requested_at": event.occurred_at.isoformat(),
            "completed_at": datetime.now(UTC).isoformat(),
            "state_deleted": state is not None,
            "cache_deleted": cache_removed,
            "cache_deletion_pending": not cache_removed,
        }
        self._delivery(
            await self.outputs.receipts.send(
                key=event.request_id.encode(), value=orjson.dumps(receipt)
            )
        )

    async def _decoded(
        self, record: SourceRecord, decode: Callable[[bytes | None, bytes | None, datetime], E]
    ) -> E | None:
        """The record's event under its pseudonym, counted; None if it was dead-lettered."""
        try:
            event = decode(record.key, record.value, datetime.now(UTC))
        except DecodeError as exc:
            await self._dead_letter(record, exc.reason, str(exc))
            return None
        event = self.privacy.identify(event)
        kind: str = event.type  # type: ignore[attr-defined]
        self.counts[kind] += 1
        self.metrics.labelled(self.metrics.events, kind).inc()
        return event

    async def _dead_letter(self, record: SourceRecord, reason: str, message: str) -> None:
        self._delivery(await self.dead_letters.send(record, reason, message))

    def _delivery(self, delivery: Any) -> None:
        """A record sent for the running batch (a dead letter, an erasure receipt): the batch's
        offsets are acknowledged only once the broker has acknowledged it too."""
        if self._batch is None:
            raise RuntimeError("records are processed only inside on_batch")
        if delivery is not None:
            self._batch.deliveries.append(delivery)

    def _marker(self, shop_id: str, customer_id: str) -> bytes:
        return erasure_marker(self.privacy.secret, shop_id, customer_id).encode()

    def _erased(self, shop_id: str, customer_id: str, partition: int) -> bool:
        return self.read_erasure(partition, self._marker(shop_id, customer_id)) is not None

    async def on_tick(self, record: SourceRecord) -> None:
        """A clock tick for one customer (see ``due_ticks`` and ``reevaluation_ticks``)."""
        try:
            tick = orjson.loads(record.value or b"")
            if tick.get("kind", "due") == "reevaluate":
                await self._reevaluate_key(record.partition, tick["key"])
            else:
                now = datetime.fromisoformat(tick["now"])
                await self._fire_key(record.partition, tick["key"], now)
        except Exception as exc:
            log.exception(
                "clock tick %s[%d]@%d failed", record.topic, record.partition, record.offset
            )
            await self._dead_letter(record, "processing_error", repr(exc))

    # -- time and re-evaluation -----------------------------------------------------------------

    async def _fire_due(self, partition: int, now: datetime) -> None:
        for key, _due in self.index.pop_due(partition, now):
            await self._fire_key(partition, key, now)

    async def _fire_key(self, partition: int, key: str, now: datetime) -> None:
        self.in_flight.pop(key, None)
        state = self._load(key, partition)
        if state is None:
            return
        model = self.model_for(state.shop_id)
        new_state, transitions = due_transitions(state, now, model)
        await self._save(partition, new_state, transitions, previous=state)

    async def _reevaluate_key(self, partition: int, key: str) -> None:
        state = self._load(key, partition)
        if state is None:
            return
        if self.clock_mode == "wall":  # as far as the partition's orders are read
            wall = datetime.now(UTC)
            now = self.read_until(partition, wall) or state.as_of or wall
        else:  # the partition's event time; the customer's own if the partition has none yet
            now = self.index.watermarks.get(partition) or state.as_of or datetime.now(UTC)
        new_state, transitions = reevaluate(state, self.model_for(state.shop_id), now)
        # Saved even when nothing changed (then Redis only): a tick replayed after a crash
        # finds its effect in the table, while the crash may have lost its Redis write.
        await self._save(partition, new_state, transitions, previous=state)

    def due_ticks(self, now: datetime) -> list[tuple[int, bytes]]:
        """Wall-clock mode: (partition, tick) for every customer due by ``now`` whose
        partition's orders have been read up to the due time (``read_until``)."""
        ticks = []
        for partition in self.index.partitions():
            until = self.read_until(partition, now)
            if until is None:
                continue
            for key, due in self.index.pop_due(partition, until):
                self.in_flight[key] = due
                ticks.append((partition, _tick("due", key, until)))
        return ticks

    def read_until(self, partition: int, now: datetime) -> datetime | None:
        """Wall clock: the instant up to which the orders of ``partition`` have been read.

        ``now`` when no order is waiting (the last one processed is the partition's last), or
        when none has been processed for ``STALLED_SECONDS`` although the offsets say some are
        waiting; otherwise the timestamp of the last one processed (orders are published in
        time order, so those before it are read); None while that is not known (the consumer
        has no end offset yet, or none of the waiting orders has been processed yet)."""
        if self.input_end is None:
            return now
        position = self.input_end(partition)
        if position is None:  # paused or not known: the wait starts again once it is
            self._waiting.pop(partition, None)
            return None
        end, committed = position
        read = self._read.get(partition)
        done = max(read[0] if read else 0, committed or 0)
        if done >= end:
            self._waiting.pop(partition, None)
            return now
        since = self._waiting.setdefault(partition, time.monotonic())
        if read is not None:
            since = max(since, read[2])
        if time.monotonic() - since > STALLED_SECONDS:
            return now
        if read is None or read[1] is None:
            return None
        return min(now, datetime.fromtimestamp(read[1], UTC))

    def overdue(self, now: datetime, grace: float) -> list[datetime]:
        """Due times passed more than ``grace`` seconds ago whose transition is not applied yet
        (wall clock only: in event-time mode the stream's own time decides)."""
        if self.clock_mode != "wall":
            return []
        before = now - timedelta(seconds=grace)
        return self.index.overdue(before) + [d for d in self.in_flight.values() if d < before]

    def reevaluation_ticks(self, limit: int = 5000) -> list[tuple[int, bytes]]:
        """(partition, tick) for up to ``limit`` customers waiting for re-evaluation."""
        batch = self.pending_reevaluation[:limit]
        del self.pending_reevaluation[:limit]
        return [(partition, _tick("reevaluate", key, None)) for partition, key in batch]

    async def _stale_customers(self, shop_id: str) -> list[tuple[int, str]]:
        """Customers of the shop evaluated under another calibration, in the table or only in
        a batch not written yet; yields to the event loop now and then, skips (and logs)
        values it cannot read."""
        stale = []
        prefix = f"{shop_id}/".encode()
        model = self.model_for(shop_id)
        # States of the running batch and of the one being written: they reach the table only
        # after this scan has passed them, or never if no later record touches the customer.
        for batch in (self._batch, self._writing):
            if batch is None:
                continue
            for key, change in batch.changes.items():
                if change.state.shop_id == shop_id and needs_reevaluation(change.state, model):
                    stale.append((change.partition, key))
        for count, (key, value) in enumerate(self.table.items(), start=1):
            if count % 1000 == 0:
                await asyncio.sleep(0)
            if not key.startswith(prefix):
                continue
            try:
                header = decode_header(value)
                if header is None:
                    partition, state = decode_stored(value)
                    if needs_reevaluation(state, model):
                        stale.append((partition, state.key))
                elif (header.rule_version, header.calibration_version) != (
                    model.rules.version,
                    model.calibration.version,
                ):
                    stale.append((header.partition, header.key))
            except Exception:
                log.exception("cannot read the stored state of %r", key)
        return list(dict.fromkeys(stale))  # once each, in the table too or not

    async def resync_cache(self, partitions: set[int], batch: int = 500) -> int:
        """Write every consenting customer of ``partitions`` to Redis again (after Redis lost
        its data); returns how many. Yields to the event loop between batches."""
        written = 0
        pending: list[tuple[CustomerState, Any]] = []
        for value in list(self.table.values()):
            try:
                partition, state = decode_stored(value)
            except Exception:
                log.exception("cannot read a stored customer state")
                continue
            model = self.model_for(state.shop_id)
            if partition not in partitions or not consented(state, model.consent_required):
                continue
            pending.append((state, self._cache_metrics(state, model)))
            if len(pending) >= batch:
                await self.cache.write(pending)
                written += len(pending)
                pending = []
                await asyncio.sleep(0)
        if pending:
            await self.cache.write(pending)
            written += len(pending)
        return written

    def stats(self) -> dict[str, Any]:
        """Counters for operators (served by the worker at ``/stats``)."""
        return {
            "events": dict(self.counts),
            "dead_letters": dict(self.dead_letters.counts),
            "customers_with_due_time": len(self.index),
            "pending_reevaluation": len(self.pending_reevaluation),
            "calibrations": {shop: c.version for shop, c in sorted(self.calibrations.items())},
            "redis": {"pending_writes": self.cache.pending, "write_errors": self.cache.errors},
        }

    async def rebuild_index(self) -> None:
        """After recovery or a rebalance: due times and the customers evaluated under another
        rule set or calibration, from the table's contents.

        Not the partitions' event time: the table can be ahead of the committed offsets (a
        batch is written before its offsets are committed, and a crash can leave part of one
        written), and the replayed records must see the event time they saw the first time.
        Taken from the newest stored state, it would find a customer whose replayed orders are
        still to come inactive before them. It starts again with the first record.

        Yields to the event loop now and then, so a large table does not starve the consumer's
        heartbeats; a value that cannot be decoded is logged and skipped, never fatal.
        """
        self.index.clear()
        self.in_flight.clear()
        self.pending_reevaluation.clear()
        self._read.clear()  # partitions may have moved: their positions are the consumer's now
        self._waiting.clear()
        failed = 0
        count = 0
        for count, value in enumerate(self.table.values(), start=1):
            try:
                self._index_value(value)
            except Exception:
                failed += 1
                log.exception("cannot index a stored customer state")
            if count % 1000 == 0:
                await asyncio.sleep(0)
        self.customers = count
        log.info(
            "due index rebuilt: %d customers with a due time, %d to re-evaluate, %d unreadable",
            len(self.index),
            len(self.pending_reevaluation),
            failed,
        )

    def _index_value(self, value: bytes) -> None:
        """Schedule one stored customer: from the stored due time when the state was evaluated
        under the current rules and calibration (no decoding of the state), else in full."""
        header = decode_header(value)
        if header is not None:
            model = self.model_for(header.shop_id)
            if (header.rule_version, header.calibration_version) == (
                model.rules.version,
                model.calibration.version,
            ):
                self.index.schedule(header.partition, header.key, header.due)
                return
        # No header, or decided under other rules or cut-offs: decode, re-evaluate soon.
        partition, state = decode_stored(value)
        model = self.model_for(state.shop_id)
        if needs_reevaluation(state, model):
            self.pending_reevaluation.append((partition, state.key))
        self.index.schedule(partition, state.key, next_due(state, model))

    # -- outputs ------------------------------------------------------------------------------

    def _load(self, key: str, partition: int) -> CustomerState | None:
        for batch in (self._batch, self._writing):  # this batch's changes, then the last one's
            if batch is not None and (change := batch.changes.get(key)) is not None:
                return change.state
        value = self.read(partition, key.encode())
        return None if value is None else load_stored(value, self.model_for)

    async def _save(
        self,
        partition: int,
        state: CustomerState,
        transitions: list[Transition],
        *,
        previous: CustomerState | None,
    ) -> None:
        """Write the customer's state in this batch, after its transitions.

        Transitions first, acknowledged by the broker, then the state: if a crash comes in
        between, the event is processed again (its offset is not committed) and the same
        transitions, with the same ids, are sent again. Never a state without its transitions.

        ``previous`` is the state it was decided from (None: a new customer). An unchanged
        state goes to Redis again but not to the table: a record processed again after a crash
        can find its effect already in the table while the crash lost the Redis write (or left
        it pending).
        """
        emitted_at, deliveries = await self._publish(transitions)
        if previous is None:
            self.customers += 1
        changed = previous is None or state.revision != previous.revision
        model = self.model_for(state.shop_id)
        consenting = consented(state, model.consent_required)
        # The next due time, scheduled at once (later records of the batch may reach it) and
        # stored with the state.
        due = next_due(state, model) if consenting else None
        self.index.schedule(partition, state.key, due)
        batch = self._batch
        if batch is None:
            raise RuntimeError("customer states change only inside on_batch")
        # Written by _write_changes, once the batch's transitions are acknowledged.
        batch.deliveries += deliveries
        earlier = batch.changes.get(state.key)
        emitted = emitted_at if transitions or earlier is None else earlier.emitted_at
        batch.changes[state.key] = _Change(
            partition,
            state,
            batch.current,
            emitted,
            due,
            changed or (earlier is not None and earlier.changed),
            self._cache_metrics(state, model, emitted) if consenting else None,
        )

    def _cache_metrics(
        self, state: CustomerState, model: SegmentModel, fallback: datetime | None = None
    ) -> Any:
        """The figures cached for the customer: as of their latest instant, with the scores the
        segment was decided with."""
        if state.as_of is not None:
            return current_metrics(state, model)
        at = fallback or datetime.now(UTC)
        return compute_metrics(state, at, model.rules, model.calibration)

    async def _send(self, transitions: list[Transition], force: bool = False) -> datetime:
        """``_publish`` and wait until the broker has acknowledged every transition."""
        emitted_at, deliveries = await self._publish(transitions, force)
        await asyncio.gather(*deliveries, *await self.outputs.dispatch())
        return emitted_at

    async def _publish(
        self, transitions: list[Transition], force: bool = False
    ) -> tuple[datetime, list[Any]]:
        """Hand transitions to the producer for the transitions topic and the marketing topics
        (``force``: to marketing whatever the backfill setting: an erasure must reach
        downstream); returns the emission time and the delivery futures."""
        emitted_at = datetime.now(UTC)
        deliveries: list[Any] = []
        debug = log.isEnabledFor(logging.DEBUG)
        out = self.outputs
        to_marketing = force or not (out.backfill and out.marketing_skip_backfill)
        for transition in transitions:
            self.counts[transition.transition] += 1
            metrics = self.metrics
            metrics.labelled(
                metrics.transitions, transition.transition, transition.cause.kind
            ).inc()
            if not out.backfill:
                delay = (emitted_at - transition.event_time).total_seconds()
                self.metrics.transition_delay.observe(max(delay, 0.0))
            key = transition.customer_id.encode()
            value = encode_transition(transition, emitted_at, out.backfill)
            sent = await out.transitions.send(key=key, value=value)
            if sent is not None:  # else held back, until dispatched
                deliveries.append(sent)
            if debug:  # no log record is built per transition unless asked for
                log.debug(
                    "transition %s of %s",
                    transition.transition,
                    transition.customer_id,
                    extra={
                        "event_id": transition.event_id,
                        "shop_id": transition.shop_id,
                        "customer_id": transition.customer_id,
                        "transition": transition.transition,
                        "cause": transition.cause.kind,
                    },
                )
            marketing = out.marketing.get(transition.transition)
            skip = transition.cause.kind in out.marketing_skip_causes
            if marketing is not None and to_marketing and not skip:
                sent = await marketing.send(key=key, value=value)
                if sent is not None:
                    deliveries.append(sent)
        return emitted_at, deliveries


def load_stored(value: bytes, model_for: Callable[[str], SegmentModel]) -> CustomerState:
    """The state of a table value, its stored due time handed to ``next_due`` (which then
    need not compute it for the loaded state; ``model_for`` gives a shop's model)."""
    stored = decode_stored_due(value)
    if stored.due_known:
        remember_due(stored.state, model_for(stored.state.shop_id), stored.due)
    return stored.state


async def _nothing() -> None:
    return None


def _not_newer(candidate: Calibration, current: Calibration) -> bool:
    if candidate.version == current.version:
        return True
    if candidate.computed_at is None or current.computed_at is None:
        return False
    return candidate.computed_at <= current.computed_at


def _tick(kind: TickKind, key: str, now: datetime | None) -> bytes:
    return orjson.dumps({"kind": kind, "key": key, "now": now.isoformat() if now else None})
