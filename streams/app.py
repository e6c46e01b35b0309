"""The Faust app: topics, the customer table, the agent and the timers, wired from settings.

``create_app`` is the one place that builds clients (no connection at import time).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.exceptions import PartitionsMismatch
from faust.stores import rocksdb as rocksdb_store
from faust.stores.rocksdb import Store as RocksDBStore
from faust.streams import _current_event  # the variable behind faust.current_event()
from faust.web import View
from redis.exceptions import RedisError

from config.settings import Settings
from models.routing import marketing_transitions
from models.rules import SegmentRules
from models.scoring import Calibration
from streams import faust_corrections, intake
from streams.calibrations import follow_calibrations, recalibrate, recalibration_due
from streams.dlq import DeadLetters, SourceRecord
from streams.lag import LagProbe
from streams.metrics import WorkerMetrics
from streams.orders import Outputs, Privacy, Processor
from streams.outbox import Outbox
from streams.redis_cache import RedisCache

log = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = 2.0
LAG_INTERVAL_SECONDS = 5.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"
# A time-caused transition later than this after its due time counts as overdue.
OVERDUE_GRACE_SECONDS = 5.0
# How often the leader checks whether a scheduled recalibration is due.
RECALIBRATION_CHECK_SECONDS = 300.0


@dataclass
class Segmenter:
    app: faust.App
    processor: Processor
    cache: RedisCache
    metrics: WorkerMetrics


@dataclass(frozen=True)
class ProducerTopic:
    """A topic whose records wait in the outbox until the processor sends them with the
    rest of its batch's (see ``streams.outbox``). Transitions are bytes already: Faust's
    per-message channel path (schemas, callbacks, a future of its own per record) and a
    producer call per record would be most of what a send costs."""

    outbox: Outbox
    name: str

    async def send(self, *, key: bytes, value: bytes) -> None:
        self.outbox.add(self.name, key, value)


def broker_urls(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{s.strip()}" for s in bootstrap_servers.split(",") if s.strip())


def create_app(
    settings: Settings,
    rules: SegmentRules,
    partitions: int,
    calibrations: dict[str, Calibration],
) -> Segmenter:
    """Build the app for a given orders topic partition count (see ``ensure_topics``) and the
    shops' current calibrations (see ``read_calibrations``)."""
    faust_corrections.install()
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap_servers),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=settings.web_port != 0,
        web_port=settings.web_port or 6066,
        web_bind=settings.web_host,
        autodiscover=False,
        processing_guarantee="at_least_once",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        producer_max_batch_size=512 * 1024,
        stream_buffer_maxsize=max(4096, 2 * settings.batch_max_records),
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    clock = app.topic(settings.clock_topic, partitions=partitions, **raw)
    dlq = app.topic(settings.dlq_topic, **raw)
    compaction = {
        # Old values of an erased customer are compacted away once their segment is closed;
        # the segment age bounds how long that takes.
        "segment.ms": str(settings.changelog_segment_ms),
        "max.compaction.lag.ms": str(settings.changelog_segment_ms),
        "min.cleanable.dirty.ratio": "0.01",
    }
    table = app.Table(
        settings.table_name,
        partitions=partitions,
        key_type=bytes,  # bytes in, bytes out: streams.codecs owns the encoding
        value_type=bytes,
        extra_topic_configs=compaction,
    )
    # Erased customers, by a hash of their id: their orders start nothing until new consent.
    erasures = app.Table(
        "erasures",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=compaction,
    )
    changelog = ChangelogAcks(app)
    changelog.watch(table)
    changelog.watch(erasures)
    metrics = WorkerMetrics()

    def observe_redis(seconds: float, ok: bool) -> None:
        metrics.redis_write.observe(seconds)
        if not ok:
            metrics.redis_errors.inc()

    cache = RedisCache.from_url(settings.redis_url, settings.redis_prefix, observe_redis)
    outbox = Outbox(lambda: app.producer._ensure_producer())
    outputs = Outputs(
        transitions=ProducerTopic(outbox, settings.transitions_topic),
        marketing={
            name: ProducerTopic(outbox, settings.marketing_topic(name))
            for name in marketing_transitions(rules)
        },
        dispatch=outbox.send,
        discard=outbox.clear,
        backfill=settings.is_backfill,
        marketing_skip_backfill=settings.marketing_skip_backfill,
        marketing_skip_causes=frozenset(settings.marketing_skip_causes),
        receipts=app.topic(settings.erasure_receipts_topic, **raw),
    )
    processor = Processor(
        table=table,
        erasures=erasures,
        rules=rules,
        calibrations=calibrations,
        outputs=outputs,
        dead_letters=DeadLetters(dlq, lambda reason: metrics.dead_letters.labels(reason).inc()),
        cache=cache,
        clock_mode=settings.clock,
        metrics=metrics,
        privacy=Privacy(consent_required=settings.consent_required, secret=settings.secret),
        table_durable=changelog.wait,
        read=partition_reader(table),
        read_erasure=partition_reader(erasures),
        write=partition_writer(table),
        on_write_failed=stop_after_failed_write,
        input_end=input_end(app, settings.orders_topic) if settings.clock == "wall" else None,
        partitions=partitions,
    )
    source = app.topic(
        settings.orders_topic,
        settings.clock_topic,
        settings.consent_topic,
        settings.erasure_topic,
        **raw,
    )
    handlers = {
        settings.orders_topic: processor.on_order,
        settings.clock_topic: processor.on_tick,
        settings.consent_topic: processor.on_consent,
        settings.erasure_topic: processor.on_erasure,
    }

    @app.agent(source, name="segmenter.process")
    async def process(stream: faust.StreamT) -> None:
        # Batches, acknowledged only once processed and written: a crash (or an error that
        # stops the worker) leaves the batch's offsets uncommitted, so nothing is skipped.
        # A batch's writes go on while the next batch is processed; its offsets are
        # acknowledged once they are done (``written``).
        try:
            async for events in intake.batches(
                app, stream, settings.batch_max_records, settings.batch_max_wait_seconds
            ):
                items = []
                for event in events:
                    message = event.message
                    record = SourceRecord(
                        message.key,
                        message.value,
                        message.topic,
                        message.partition,
                        message.offset,
                        message.timestamp,
                        message.headers,
                    )
                    items.append((record, handlers[message.topic]))

                def activate(index: int, events: Any = events) -> None:
                    # The running task's context variable (what tables read): the stream's
                    # own ``current_event`` is not used (``intake`` reads past the stream).
                    _current_event.set(weakref.ref(events[index]))

                async def written(events: Any = events) -> None:
                    for event in events:
                        intake.ack(app, event)

                try:
                    await processor.on_batch(items, activate, written)
                except Exception:
                    intake.forget(app, events)  # failed: nothing of it is acknowledged
                    raise
        finally:  # stopping, or restarted on a rebalance: the last batch's writes finish first
            await processor.drain()

    _operations(app, settings, processor, cache, metrics)

    @table.on_recover
    async def rebuild_due_index() -> None:
        await processor.rebuild_index()

    @app.timer(REDIS_RETRY_SECONDS)
    async def keep_redis_in_step() -> None:
        """Retry failed writes; after Redis lost its data, write this worker's customers again."""
        try:
            if cache.pending:
                left = await cache.flush_pending()
                log.info("redis: %d customer writes still pending", left)
            if app.tables.recovery.in_recovery or app.rebalancing:
                return
            owned = {
                tp.partition
                for tp in app.consumer.assignment()
                if tp.topic == settings.orders_topic
            }
            missing = await cache.missing_markers(settings.app_id, owned)
            if missing:
                written = await processor.resync_cache(set(missing))
                for partition in missing:
                    await cache.set_marker(settings.app_id, partition)
                log.info("redis: wrote %d customers of partitions %s again", written, missing)
        except RedisError as exc:
            log.warning("redis unavailable: %s", exc)

    @app.timer(settings.clock_interval_seconds)
    async def clock_tick() -> None:
        ticks = processor.reevaluation_ticks()
        if settings.clock == "wall":
            ticks += processor.due_ticks(datetime.now(UTC))
        for partition, tick in ticks:
            await clock.send(value=tick, partition=partition)

    @app.task
    async def adopt_calibrations() -> None:
        await follow_calibrations(settings, processor.set_calibration)

    interval = timedelta(hours=settings.recalibration_interval_hours)
    if settings.clock == "wall" and rules.scoring.mode == "quantile" and interval:
        attempted: list[datetime] = []

        @app.timer(min(interval.total_seconds(), RECALIBRATION_CHECK_SECONDS), on_leader=True)
        async def scheduled_recalibration() -> None:
            """Due by the oldest calibration the topic holds (see ``recalibration_due``)."""
            now = datetime.now(UTC)
            last = attempted[-1] if attempted else None
            if not recalibration_due(processor.calibrations.values(), last, now, interval):
                return
            attempted[:] = [now]
            try:
                published = await recalibrate(settings, rules, now)
            except Exception:  # tried again at the next check
                attempted.clear()
                log.exception("scheduled recalibration failed")
                return
            log.info("scheduled recalibration: %s", [c.version for c in published])

    return Segmenter(app=app, processor=processor, cache=cache, metrics=metrics)


def _operations(
    app: faust.App,
    settings: Settings,
    processor: Processor,
    cache: RedisCache,
    metrics: WorkerMetrics,
) -> None:
    """Metrics, health and readiness, pause/resume and the lag measurement."""
    recovery = app.tables.recovery
    paused = {"on": False}

    def gauge(name: str, documentation: str, read: Any) -> None:
        metrics.callback_gauge(name, documentation, read)

    gauge(
        "segmenter_table_customers",
        "Customers in this worker's table partitions",
        lambda: processor.customers,
    )
    gauge(
        "segmenter_due_customers",
        "Customers with a due time in this worker's index",
        lambda: len(processor.index),
    )

    def overdue() -> list[datetime]:
        return processor.overdue(datetime.now(UTC), OVERDUE_GRACE_SECONDS)

    def oldest_overdue() -> float:
        late = overdue()
        return (datetime.now(UTC) - min(late)).total_seconds() if late else 0.0

    gauge(
        "segmenter_overdue_customers",
        f"Customers whose time-caused transition is more than {OVERDUE_GRACE_SECONDS:.0f} s late",
        lambda: len(overdue()),
    )
    gauge(
        "segmenter_oldest_overdue_seconds",
        "How late the most overdue due time is (0: none)",
        oldest_overdue,
    )
    gauge(
        "segmenter_redis_pending_writes",
        "Customer writes waiting for Redis to come back",
        lambda: cache.pending,
    )
    gauge(
        "segmenter_pending_reevaluations",
        "Customers waiting for re-evaluation",
        lambda: len(processor.pending_reevaluation),
    )
    gauge(
        "segmenter_recovering",
        "1 while tables are being recovered from the changelog",
        lambda: 1.0 if recovery.in_recovery else 0.0,
    )
    gauge(
        "segmenter_recovery_remaining_messages",
        "Changelog messages left to recover",
        lambda: float(recovery.active_remaining_total()) if recovery.in_recovery else 0.0,
    )
    gauge(
        "segmenter_paused",
        "1 while consumption is paused by an operator",
        lambda: 1.0 if paused["on"] else 0.0,
    )

    @app.on_partitions_revoked.connect
    def count_rebalance(sender: Any, revoked: Any, **_: Any) -> None:
        metrics.rebalances.inc()

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        # aiohttp takes the charset apart from the content type
        return web.bytes(metrics.exposition(), content_type=PROMETHEUS_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        """The process is alive and serving."""
        return web.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        """Recovery finished, the broker and Redis reachable: ready for traffic."""
        checks = {
            "recovered": recovery.completed.is_set()
            and not recovery.in_recovery
            and not app.rebalancing,
            "broker": await _broker_reachable(settings),
            "redis": await cache.ping(),
        }
        ready = all(checks.values())
        return web.json({"ready": ready, "checks": checks}, status=200 if ready else 503)

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        """Counters since the worker started: events by type, transitions, dead letters."""
        return web.json({**processor.stats(), "paused": paused["on"]})

    def source_partitions() -> set[Any]:
        return {tp for tp in app.consumer.assignment() if tp.topic == settings.orders_topic}

    def set_paused(on: bool) -> dict[str, bool]:
        paused["on"] = on
        if on:
            app.consumer.pause_partitions(source_partitions())
        else:
            app.consumer.resume_partitions(source_partitions())
        return {"paused": on}

    @app.page("/pause")
    class Pause(View):
        """POST: stop fetching orders (maintenance; lag builds up). GET: the current state."""

        async def get(self, request: Any) -> Any:
            return self.json({"paused": paused["on"]})

        async def post(self, request: Any) -> Any:
            return self.json(set_paused(True))

    @app.page("/resume")
    class Resume(View):
        """POST: fetch orders again."""

        async def get(self, request: Any) -> Any:
            return self.json({"paused": paused["on"]})

        async def post(self, request: Any) -> Any:
            if recovery.in_recovery:  # recovery resumes the partitions itself when done
                return self.json({"paused": paused["on"], "error": "recovering"}, status=409)
            return self.json(set_paused(False))

    probe = LagProbe(settings.kafka_bootstrap_servers, settings.app_id)

    @app.timer(LAG_INTERVAL_SECONDS)
    async def measure_lag() -> None:
        if paused["on"]:  # a rebalance may have resumed them; keep the operator's word
            app.consumer.pause_partitions(source_partitions())
        try:
            await probe.start()
            partitions = [TopicPartition(tp.topic, tp.partition) for tp in source_partitions()]
            lags = await probe.measure(partitions, with_age=True)
        except Exception as exc:  # the broker is away: keep the last values
            log.warning("lag measurement failed: %r", exc)
            return
        metrics.lag_messages.clear()
        metrics.lag_seconds.clear()
        for lag in lags:
            labels = (lag.topic, str(lag.partition))
            metrics.lag_messages.labels(*labels).set(lag.lag if lag.lag is not None else lag.end)
            metrics.lag_seconds.labels(*labels).set(lag.age_seconds or 0.0)


# The exit status of a worker that stopped because a batch could not be written (EX_TEMPFAIL).
WRITE_FAILED_EXIT = 75


def stop_after_failed_write(exc: BaseException) -> None:
    """A batch the broker refused to take (its transitions or its changelog records, after the
    producer's own retries) stops the worker at once, like a crash: the batch's offsets are not
    committed and the store may hold states whose changelog records never arrived, so the only
    sound way on is a restart, which rebuilds the store from the changelog (the clean-stop
    marker is not written) and processes the batch again. A graceful stop would wait for
    acknowledgements that never come."""
    log.critical(
        "a batch could not be written (%r): stopping with exit status %d; a restart processes "
        "it again from the last committed offsets",
        exc,
        WRITE_FAILED_EXIT,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(WRITE_FAILED_EXIT)


def input_end(app: Any, topic: str) -> Callable[[int], tuple[int, int | None] | None]:
    """(end offset, committed offset) of a partition of ``topic`` as the worker's consumer knows
    them (the end offset from its latest fetch): None while the partition is not assigned, is
    paused (``/pause``, or until the tables have recovered: what comes in is not seen) or the
    consumer has no end offset for it yet."""

    def position(partition: int) -> tuple[int, int | None] | None:
        consumer = app.consumer
        tp = TopicPartition(topic, partition)  # equal to Faust's TP of the same partition
        if tp not in consumer.assignment() or tp in consumer._paused_partitions:
            return None
        end = consumer.highwater(tp)
        if end is None:
            return None
        return end, consumer._committed_offset.get(tp)

    return position


def partition_reader(table: Any) -> Callable[[int, bytes], bytes | None]:
    """Reads one key of one partition of a table. On RocksDB, one read of the partition's
    database: a table's ``get`` asks the store twice (contains, then get), through several
    mapping layers, and finds the partition from the current event as well."""

    def read(partition: int, key: bytes) -> bytes | None:
        store = table.data
        if isinstance(store, RocksDBStore):
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        got: bytes | None = table.get(key)
        return got

    return read


Row = tuple[int, bytes, bytes]  # (partition, key, value)


def partition_writer(table: Any) -> Callable[[Sequence[Row]], None]:
    """Writes keys of given partitions of a table: what ``table[key] = value`` does with a
    record of the key's partition as the current event (the changelog record, then the store),
    for many keys at once.

    On RocksDB, one write batch per partition: one append to the database's log instead of
    one per key, and none of the table's per-key layers (the current event's lookup, the store's
    key-to-partition index behind a lock, the table sensors' set counter; the store finds a key
    missing from its index in the partitions' databases). The write batch is made the way the
    installed Faust's store makes the ones it recovers the changelog with. A partition the
    table does not have (an input topic grown past it) is refused before anything is written,
    as Faust's per-key write refuses it (``PartitionsMismatch``)."""

    def write(rows: Sequence[Row]) -> None:
        for partition, _key, _value in rows:
            if not 0 <= partition < table.partitions:  # what Faust's per-key write checks
                raise PartitionsMismatch(
                    f"a record of partition {partition} for table {table.name!r}, whose "
                    f"changelog has {table.partitions} partitions: the input topics and the "
                    "table must have the same number of partitions"
                )
        for partition, key, value in rows:
            table.send_changelog(partition, key, value)
        store = table.data
        if not isinstance(store, RocksDBStore):
            for _partition, key, value in rows:
                store[key] = value
            return
        batches: dict[int, Any] = {}
        for partition, key, value in rows:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = _write_batch(store)
            batch.put(key, value)
        for partition, batch in batches.items():
            store._db_for_partition(partition).write(batch)

    return write


def _write_batch(store: RocksDBStore) -> Any:
    if store.use_rocksdict:
        return rocksdb_store.rocksdict.WriteBatch(raw_mode=True)
    return rocksdb_store.rocksdb.WriteBatch()


class _Queued:
    """What a table reads of a changelog send (``fut.message.partition``): the partition."""

    __slots__ = ("partition",)

    def __init__(self, partition: int) -> None:
        self.partition = partition

    @property
    def message(self) -> _Queued:
        return self


class ChangelogAcks:
    """The tables' changelog records: held while a batch is processed, sent together, and
    waited for until the broker has acknowledged them.

    Faust sends a table's changelog record per write through its channel path (a future, a
    pending message, a callback and a send of its own each) and keeps the record's offset in
    the store when it is acknowledged (``set_persisted_offset``: where a restart resumes
    reading the changelog). Here a table's ``send_changelog`` puts the record in an outbox
    instead; ``wait`` sends the outbox, one producer batch per changelog partition, waits for
    the broker's acknowledgements and then keeps, per batch, the offset of its last record
    in the store, as Faust's callback would have done for that record."""

    def __init__(self, app: faust.App) -> None:
        self.outbox = Outbox(lambda: app.producer._ensure_producer())
        self._tables: dict[str, Any] = {}  # by changelog topic

    def watch(self, table: Any) -> None:
        topic = table.changelog_topic.get_topic_name()
        self._tables[topic] = table

        def send_changelog(
            partition: int | None,
            key: bytes,
            value: bytes | None,
            key_serializer: Any = None,
            value_serializer: Any = None,
        ) -> _Queued:
            # the tables are bytes to bytes (streams.codecs owns the encoding): sent as they are
            if partition is None:
                raise ValueError(f"a changelog record for {topic} without its partition")
            self.outbox.add(topic, key, value, partition)
            return _Queued(partition)

        table.send_changelog = send_changelog

    async def wait(self) -> None:
        """Every changelog record written so far is acknowledged and its offset kept (raises
        the first error: then no offset is kept, and a restart reads those records again)."""
        sent = await self.outbox.send_batches()
        if not sent:
            return
        await asyncio.gather(*(batch.future for batch in sent))
        for batch in sent:
            first = batch.future.result()
            self._tables[batch.topic].data.set_persisted_offset(
                first.topic_partition, first.offset + batch.records - 1
            )


async def _broker_reachable(settings: Settings) -> bool:
    from streams.topics import broker_answers

    return await broker_answers(settings)
