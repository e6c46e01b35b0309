"""One handler per input kind: decode the record, load the customer, call the core, stage the
result in the running batch (``streams.checkpoint``). A record that cannot be used goes to the
dead-letter topic with its reason; the decisions themselves are ``models``'.

Inputs: the orders topic (``on_order``), the consent and erasure topics (``on_consent``,
``on_erasure``) and the internal clock topic (``on_tick``: a due time passed, or a
re-evaluation under a new calibration or rule set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

from aiokafka.partitioner import DefaultPartitioner

from models.churn import merged_due
from models.due import next_due, remember_due
from models.events import Cause, Transition, erasure_receipt
from models.fold import (
    OrderRejected,
    apply_consent,
    apply_order,
    due_transitions,
    erase,
    reevaluate,
    waits_for_its_order,
)
from models.privacy import consented, skipped_after_erasure
from models.segment_model import SegmentModel, current_metrics
from models.state import CustomerState, compute_metrics, state_key
from streams.checkpoint import Cache, Change, Checkpoint, Store
from streams.churn_layer import ChurnLayer, order_cause
from streams.clock import Clock
from streams.codecs import (
    DecodeError,
    decode_consent,
    decode_erasure,
    decode_order,
    decode_stored,
    decode_stored_due,
    decode_tick,
    encode_receipt,
)
from streams.dlq import DeadLetters, SourceRecord
from streams.failures import dependency_failure
from streams.metrics import WorkerMetrics
from streams.predictions import ShopPredictions
from streams.shop_models import ShopModels
from streams.sink import RecordTooLarge, TransitionSink, check_size

log = logging.getLogger(__name__)

# Every this many order records (by offset), the worker checks that the record is in the
# partition Kafka's default partitioner gives its key; a warning at most this often.
PARTITION_CHECK_EVERY = 64
MISROUTED_LOG_SECONDS = 60.0
E = TypeVar("E")
# The cause of a churn-risk move a due time or a re-evaluation brings about.
TIME = partial(Cause, kind="time")


class Markers(Protocol):
    """The erasure markers (``streams.framework.tables.TableStore``): written and removed
    through the table's own API, as of the record being processed."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def pop(self, key: bytes) -> None: ...

    def put_many(self, rows: Sequence[tuple[int, bytes, bytes]]) -> None: ...

    def delete_in(self, partition: int, key: bytes, *, stored: bool = True) -> None: ...

    def items(self) -> Any: ...


class Customers(Store, Protocol):
    """The customer table (``streams.framework.tables.TableStore``), with deletes in one
    partition."""

    def delete_in(self, partition: int, key: bytes, *, stored: bool = True) -> None: ...


@dataclass(frozen=True)
class Stores:
    """Where a customer's data lives: the customer table, the erasure markers, the Redis copy;
    and the orders topic's partition count (None: records are not checked against Kafka's
    default partitioner)."""

    customers: Customers
    erasures: Markers
    cache: Cache
    partitions: int | None = None


@dataclass(frozen=True)
class Outputs:
    """Where records go: transitions to the sink, rejects to the dead-letter topic, erasure
    receipts to their topic (a topic whose ``send`` returns the delivery)."""

    sink: TransitionSink
    dead_letters: DeadLetters
    receipts: Any = None


class Handlers:
    """Applies order events, privacy requests and clock ticks to the customers."""

    def __init__(
        self,
        models: ShopModels,
        stores: Stores,
        outputs: Outputs,
        checkpoint: Checkpoint,
        clock: Clock,
        metrics: WorkerMetrics,
    ) -> None:
        self.models = models
        self.stores = stores
        self.outputs = outputs
        self.checkpoint = checkpoint
        self.clock = clock
        self.metrics = metrics
        # Customers in the table of this worker's partitions.
        self.customers = 0
        self._partitioner = DefaultPartitioner()
        # The dead letters sent for the batch being processed, by input position.
        self._dead_lettered: dict[tuple[str, int, int], Any] = {}
        self._misrouted_logged = float("-inf")
        # Churn risk around the fold (the processor hands it the adopted prediction models).
        self.churn = ChurnLayer(ShopPredictions(), models)

    # -- orders ---------------------------------------------------------------------------------

    async def on_order(self, record: SourceRecord) -> None:
        """One record of the orders topic; a record that cannot be used is dead-lettered."""
        with self.metrics.processing.time():
            await self._on_order(record)
        self.clock.order_read(record)
        partitions = self.stores.partitions
        if partitions and record.offset % PARTITION_CHECK_EVERY == 0 and record.key:
            self._check_partition(record, list(range(partitions)))

    async def _on_order(self, record: SourceRecord) -> None:
        order = await self._decoded(record, decode_order)
        if order is None:
            return
        partition = record.partition
        try:
            if self.clock.mode == "event":
                now = self.clock.index.advance_watermark(partition, order.occurred_at)
                await self._fire_due(partition, now)
            state = self._load(state_key(order.shop_id, order.customer_id), partition)
            erased = state is None and self._erased(order.shop_id, order.customer_id, partition)
            if skipped_after_erasure(state, erased, order.type):  # counted, logged
                self.metrics.skipped_erased.inc()
                log.info(
                    "order of an erased customer skipped at %s[%d]@%d",
                    record.topic,
                    partition,
                    record.offset,
                    extra=_position(record),
                )
                return
            model = self.models.model_for(order.shop_id)
            new_state, transitions = apply_order(state, order, model)
        except OrderRejected as exc:
            await self._dead_letter(record, exc.reason, str(exc))
            return
        except Exception as exc:  # a bug on one record must not stop the stream: park it, loudly
            if dependency_failure(exc):  # the store or Redis, not the record: tried again
                raise
            log.exception(
                "processing %s[%d]@%d failed",
                record.topic,
                partition,
                record.offset,
                extra=_position(record),
            )
            await self._dead_letter(record, "processing_error", repr(exc))
            return
        try:
            await self._save(
                partition, new_state, transitions, previous=state, cause=partial(order_cause, order)
            )
        except RecordTooLarge as exc:  # the customer goes on without this order
            await self._dead_letter(record, "state_too_large", str(exc))
            return
        if state is None or new_state.revision != state.revision:  # applied: for the insights
            self.outputs.sink.stage_order(order, state, new_state, partition)
        if waits_for_its_order(state, new_state, order):
            self._unmatched(record, order.type, order.order_id)

    def _unmatched(self, record: SourceRecord, kind: str, order_id: str) -> None:
        """A cancellation or refund of an order not seen yet: it waits in the state for its
        order (events can arrive out of order); counted and logged, since a wrong order_id or
        shop_id would otherwise wait unnoticed for ever."""
        self.metrics.labelled(self.metrics.unmatched, kind).inc()
        log.info(
            "%s of order %s, which the customer's state does not hold (yet), at %s[%d]@%d",
            kind,
            order_id,
            record.topic,
            record.partition,
            record.offset,
            extra=_position(record),
        )

    def _check_partition(self, record: SourceRecord, partitions: list[int]) -> None:
        """Count (and log, at most once a minute) an order record in another partition than
        Kafka's default partitioner (murmur2, the Java client's and aiokafka's) gives its key:
        ``segmenter forget`` reaches every partition, but consent and erasure requests the shop
        publishes land where the customer's state is only if its producers partition them like
        its orders. Every 64th record: a producer that partitions otherwise shows within its
        first records, and murmur2 in Python costs about 8 µs, too much for every order."""
        expected = self._partitioner(record.key, partitions, partitions)
        if expected == record.partition:
            return
        self.metrics.misrouted.inc()
        now = time.monotonic()
        if now - self._misrouted_logged >= MISROUTED_LOG_SECONDS:
            self._misrouted_logged = now
            log.warning(
                "order record at %s[%d]@%d is in partition %d, Kafka's default partitioner "
                "gives its key partition %d: consent and erasure requests the shop publishes "
                "must be partitioned like its orders, or they miss the customer's state "
                "(segmenter forget reaches every partition; librdkafka clients: "
                "partitioner=murmur2_random partitions like Kafka's default)",
                record.topic,
                record.partition,
                record.offset,
                record.partition,
                expected,
                extra=_position(record),
            )

    # -- privacy --------------------------------------------------------------------------------

    async def on_consent(self, record: SourceRecord) -> None:
        """One record of the consent topic."""
        event = await self._decoded(record, decode_consent)
        if event is None:
            return
        state = self._load(state_key(event.shop_id, event.customer_id), record.partition)
        erased = state is None and self._erased(event.shop_id, event.customer_id, record.partition)
        if event.type == "consent_granted":  # lifts the erasure: the customer may start again
            self.stores.erasures.pop(self.models.privacy.marker(event.shop_id, event.customer_id))
        if skipped_after_erasure(state, erased, event.type):
            return  # erased: nothing to withdraw from, and nothing to store
        new_state, transitions = apply_consent(state, event, self.models.model_for(event.shop_id))
        await self._save(
            record.partition,
            new_state,
            transitions,
            previous=state,
            cause=partial(Cause, kind=event.type),
        )

    async def on_erasure(self, record: SourceRecord) -> None:
        """One record of the erasure topic: delete every copy this partition holds, then send a
        receipt for it.

        A request may be sent to every partition (``segmenter forget`` does, since the
        webshop's producer may partition the customer's orders otherwise than the command's
        would): each partition's copy looks at its own partition's table only, and the
        customer's state is found on one of them at most. Either way the partition's changelog
        gets a tombstone for the customer, also when nothing is found (a request replayed after
        its state was deleted locally but before the tombstone reached the broker must still
        send it), and the partition remembers the erasure."""
        event = await self._decoded(record, decode_erasure)
        if event is None:
            return
        # Deletes are not batched: the batch so far is written first, so the erasure follows
        # every earlier change of the customer.
        await self.checkpoint.write_running()
        partition = record.partition
        key = state_key(event.shop_id, event.customer_id)
        state = self._load_in(key, partition)
        if state is not None:
            model = self.models.model_for(event.shop_id)
            # its transitions acknowledged, and what they change in the insights written,
            # before anything is deleted: a replayed request finds nothing to erase
            self.outputs.sink.stage(erase(state, event, model), partition, force=True)
            await self.checkpoint.write_running()
            self.customers -= 1
        # a tombstone on this partition of the compacted changelog, found or not
        self.stores.customers.delete_in(partition, key.encode(), stored=state is not None)
        self.clock.forget(partition, key)
        cache_removed = await self.stores.cache.remove(event.shop_id, event.customer_id, partition)
        self.stores.erasures.put(
            self.models.privacy.marker(event.shop_id, event.customer_id),
            event.occurred_at.isoformat().encode(),
        )
        # The tombstone, the erasure marker and a pending Redis removal reach the changelog
        # before the erasure's offset can be committed: a crash after that must not bring the
        # customer back.
        await self.stores.customers.durable()
        receipt = erasure_receipt(
            event,
            state_deleted=state is not None,
            cache_deleted=cache_removed,
            completed_at=datetime.now(UTC),
            partition=partition,
        )
        self.checkpoint.track(
            await self.outputs.receipts.send(
                key=event.request_id.encode(), value=encode_receipt(receipt)
            )
        )

    def _load_in(self, key: str, partition: int) -> CustomerState | None:
        """The customer's state if ``partition`` holds it (the memory store has one map for
        every partition, and a stored value names its partition)."""
        value = self.stores.customers.get(partition, key.encode())
        if value is None:
            return None
        stored_partition, state = decode_stored(value)
        return state if stored_partition == partition else None

    def _erased(self, shop_id: str, customer_id: str, partition: int) -> bool:
        marker = self.models.privacy.marker(shop_id, customer_id)
        return self.stores.erasures.get(partition, marker) is not None

    # -- time and re-evaluation -----------------------------------------------------------------

    async def on_tick(self, record: SourceRecord) -> None:
        """A clock tick for one customer (see ``Clock.due_ticks`` and ``reevaluation_ticks``)."""
        try:
            tick = decode_tick(record.value)
            if tick.kind == "reevaluate":
                await self._reevaluate_key(record.partition, tick.key)
            elif tick.now is None:
                raise ValueError("a due tick without its instant")
            else:
                await self._fire_key(record.partition, tick.key, tick.now)
        except Exception as exc:
            log.exception(
                "clock tick %s[%d]@%d failed", record.topic, record.partition, record.offset
            )
            await self._dead_letter(record, "processing_error", repr(exc))

    async def _fire_due(self, partition: int, now: datetime) -> None:
        for key, _due in self.clock.index.pop_due(partition, now):
            await self._fire_key(partition, key, now)

    async def _fire_key(self, partition: int, key: str, now: datetime) -> None:
        self.clock.in_flight.pop(key, None)
        state = self._load(key, partition)
        if state is None:
            return
        model = self.models.model_for(state.shop_id)
        new_state, transitions = due_transitions(state, now, model)
        new_state, crossed = self.churn.at_crossing(new_state, now, model)  # churn risk's instant
        await self._save(partition, new_state, transitions + crossed, previous=state, cause=TIME)

    async def _reevaluate_key(self, partition: int, key: str) -> None:
        state = self._load(key, partition)
        if state is None:
            return
        now = self.clock.reevaluation_time(partition, state.as_of)
        model = self.models.model_for(state.shop_id)
        new_state, transitions = reevaluate(state, model, now)
        # caught up with time like the fold: to a crossing passed by then
        new_state, crossed = self.churn.at_crossing(new_state, now, model)
        transitions += crossed
        refit = self.churn.refit_pending(key)  # a newer prediction model of the shop
        # Saved even when nothing changed (then Redis only): a tick replayed after a crash
        # finds its effect in the table, while the crash may have lost its Redis write.
        await self._save(
            partition,
            new_state,
            transitions,
            previous=state,
            cause=partial(Cause, kind="model_refit") if refit else TIME,
        )

    # -- load and save --------------------------------------------------------------------------

    def _load(self, key: str, partition: int) -> CustomerState | None:
        state = self.checkpoint.staged(key)  # this batch's changes, then the last one's
        if state is not None:
            return state
        value = self.stores.customers.get(partition, key.encode())
        return None if value is None else load_stored(value, self.models.model_for)

    async def _save(
        self,
        partition: int,
        state: CustomerState,
        transitions: list[Transition],
        *,
        previous: CustomerState | None,
        cause: Callable[[], Cause] | None = None,
    ) -> None:
        """Stage the customer's state in the running batch, after its transitions.

        ``previous`` is the state it was decided from (None: a new customer). An unchanged
        state goes to Redis again but not to the table: a record processed again after a crash
        can find its effect already in the table while the crash lost the Redis write (or left
        it pending). ``cause`` makes what a churn-risk move between the two is attributed to
        (called only where one is evaluated: a consenting customer of a shop with a prediction
        model)."""
        changed = previous is None or state.revision != previous.revision
        model = self.models.model_for(state.shop_id)
        consenting = consented(state, model.consent_required)
        # The next due time, scheduled (below) at once: later records of the batch may reach
        # it; and stored with the state.
        due = next_due(state, model) if consenting else None
        # -- churn risk (streams.churn_layer): its move, and its crossing beside the due time
        churn = self.churn.due(state, consenting)
        if cause is not None:
            moved, refit = self.churn.transition(previous, state, cause, consenting)
            transitions = [*transitions, moved] if moved is not None else transitions
            changed = changed or refit  # the stored crossing was the old model's
        # --
        judged = self.churn.judged(state, consenting)
        change = Change(partition, state, due, changed, None, churn=churn, judged=judged)
        if changed:  # too large to write: refused before anything of it is staged
            key = state.key
            check_size(f"the state of customer {key}", key.encode(), change.stored())
        emitted_at = self.outputs.sink.stage(transitions, partition)
        if previous is None:
            self.customers += 1
        self.clock.index.schedule(partition, state.key, merged_due(due, churn))
        earlier = self.checkpoint.earlier_emission(state.key)
        change.emitted_at = emitted_at if transitions or earlier is None else earlier
        change.figures = cache_figures(state, model, change.emitted_at) if consenting else None
        self.checkpoint.stage(state.key, change)

    # -- decoding and rejects -------------------------------------------------------------------

    async def _decoded(
        self, record: SourceRecord, decode: Callable[[bytes | None, bytes | None, datetime], E]
    ) -> E | None:
        """The record's event under its pseudonym, counted; None if it was dead-lettered."""
        try:
            event = decode(record.key, record.value, datetime.now(UTC))
        except DecodeError as exc:
            await self._dead_letter(record, exc.reason, str(exc))
            return None
        event = self.models.privacy.identify(event)
        kind: str = event.type  # type: ignore[attr-defined]
        self.metrics.labelled(self.metrics.events, kind).inc()
        return event

    async def _dead_letter(self, record: SourceRecord, reason: str, message: str) -> None:
        """Send the record to the dead-letter topic, once per batch however often the batch is
        processed again (``streams.failures``): a retry waits for the first delivery."""
        position = (record.topic, record.partition, record.offset)
        sent = self._dead_lettered.get(position)
        if sent is None or (sent.done() and (sent.cancelled() or sent.exception() is not None)):
            sent = await self.outputs.dead_letters.send(record, reason, message)
            self._dead_lettered[position] = sent
        self.checkpoint.track(sent)

    def batch_done(self) -> None:
        """The batch went through (or was given up): its dead letters are forgotten."""
        self._dead_lettered.clear()

    async def dead_letter(self, record: SourceRecord, reason: str, message: str) -> None:
        """Dead-letter a record in place of processing it (a record that keeps failing)."""
        await self._dead_letter(record, reason, message)


def cache_figures(
    state: CustomerState, model: SegmentModel, fallback: datetime | None = None
) -> Any:
    """The figures cached for the customer: as of their latest instant, with the scores the
    segment was decided with."""
    if state.as_of is not None:
        return current_metrics(state, model)
    at = fallback or datetime.now(UTC)
    return compute_metrics(state, at, model.rules, model.calibration)


def load_stored(value: bytes, model_for: Callable[[str], SegmentModel]) -> CustomerState:
    """The state of a table value, its stored due time handed to ``next_due`` (which then
    need not compute it for the loaded state; ``model_for`` gives a shop's model)."""
    stored = decode_stored_due(value)
    if stored.due_known:
        remember_due(stored.state, model_for(stored.state.shop_id), stored.due)
    return stored.state


def _position(record: SourceRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}
