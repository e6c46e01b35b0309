"""The Faust app: its topics and tables, the agent and the timers, registered on the parts that
``streams.bootstrap`` wires from the settings (no connection at import time)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka import TopicPartition

from config.settings import Settings
from models.rules import SegmentRules
from models.scoring import Calibration
from streams import framework, web
from streams.bootstrap import build_processor
from streams.calibrations import follow_calibrations, recalibrate, recalibration_due
from streams.clients import faust_broker_options
from streams.dlq import SourceRecord
from streams.framework import intake
from streams.framework.store_age import discard_stale_stores
from streams.insights import tables as insights
from streams.lag import LagProbe
from streams.predictions import fit_and_publish, fit_due, follow_models
from streams.processor import Processor
from streams.redis_cache import REDIS_FAILURES

log = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = 2.0
LAG_INTERVAL_SECONDS = 5.0
# How often the leader checks whether a scheduled recalibration is due.
RECALIBRATION_CHECK_SECONDS = 300.0


@dataclass
class Segmenter:
    app: faust.App
    processor: Processor


def create_app(
    settings: Settings,
    rules: SegmentRules,
    partitions: int,
    calibrations: dict[str, Calibration],
) -> Segmenter:
    """Build the app for a given orders topic partition count (see ``ensure_topics``) and the
    shops' current calibrations (see ``read_calibrations``)."""
    framework.install()
    discard_stale_stores(settings.changelog_delete_retention_ms)
    app = faust.App(
        settings.app_id,
        # Faust would let its own environment variables (APP_WEB_TABLES_ENABLED, BROKER_URL,
        # ...) override what is passed here: the SEGMENTER_ settings are the only configuration.
        env={},
        **faust_broker_options(settings),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=settings.web_port != 0,
        web_port=settings.web_port or 6066,
        web_bind=settings.web_host,
        # Faust's built-in views are off: /table reads any customer's stored state, /router
        # tells the cluster's layout, the statistics and graph views the worker's internals.
        # Ours (streams.web) are the worker's HTTP surface.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        autodiscover=False,
        processing_guarantee="at_least_once",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        producer_max_batch_size=512 * 1024,
        stream_buffer_maxsize=max(4096, 2 * settings.batch_max_records),
    )
    compaction = {
        # Old values of an erased customer are compacted away once their segment is closed;
        # the segment age bounds how long that takes.
        "segment.ms": str(settings.changelog_segment_ms),
        "max.compaction.lag.ms": str(settings.changelog_segment_ms),
        "min.cleanable.dirty.ratio": "0.01",
        # How long a tombstone stays once compacted: a partition store older than that could
        # miss it and bring an erased customer back (see streams.local_store).
        "delete.retention.ms": str(settings.changelog_delete_retention_ms),
    }

    def table(name: str) -> Any:  # bytes in, bytes out: streams.codecs owns the encoding
        return app.Table(
            name,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs=compaction,
        )

    customers = table(settings.table_name)
    # Erased customers, by a hash of their id: their orders start nothing until new consent.
    erasures = table("erasures")
    # The segment insights' tables, written in the worker's batches (streams/insights/).
    kept = insights.register(app, settings, table) if settings.insights else None
    processor = build_processor(
        app, settings, rules, calibrations, (customers, erasures), partitions, kept
    )
    _agent(app, settings, processor)
    orders = web.register(app, settings, processor)

    @customers.on_recover
    async def rebuild_due_index() -> None:
        await processor.rebuild_index()

    @erasures.on_recover
    async def restore_pending_removals() -> None:
        """Redis removals stored before a crash (or by the partitions' last worker)."""
        restored = processor.handlers.stores.cache.restore_removals()
        if restored:
            log.info("redis: %d stored customer removals pending", restored)

    _timers(app, settings, rules, processor, orders, partitions)
    _prediction_tasks(app, settings, processor)
    return Segmenter(app=app, processor=processor)


def _agent(app: faust.App, settings: Settings, processor: Processor) -> None:
    """The agent: the orders, clock, consent and erasure topics, in batches."""
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    handlers = {
        settings.orders_topic: processor.on_order,
        settings.clock_topic: processor.on_tick,
        settings.consent_topic: processor.on_consent,
        settings.erasure_topic: processor.on_erasure,
    }
    source = app.topic(*handlers, **raw)

    # The records reach the agent through a buffer, without Faust's per-record events.
    buffer = intake.Buffer(app, handlers, max(4096, 2 * settings.batch_max_records))

    @app.agent(source, name="segmenter.process")
    async def process(stream: faust.StreamT) -> None:
        # Batches, acknowledged only once processed and written: a crash (or an error that
        # stops the worker) leaves the batch's offsets uncommitted, so nothing is skipped.
        # A batch's commit goes on while the next batch is processed; its offsets are
        # acknowledged once it is done (``written``).
        try:
            async for messages in buffer.batches(
                settings.batch_max_records, settings.batch_max_wait_seconds
            ):
                items = [
                    (
                        SourceRecord(
                            m.key, m.value, m.topic, m.partition, m.offset, m.timestamp, m.headers
                        ),
                        handlers[m.topic],
                    )
                    for m in messages
                ]

                def activate(index: int, messages: Any = messages) -> None:
                    buffer.activate(messages[index])

                async def written(messages: Any = messages) -> None:
                    buffer.ack(messages)

                def still_ours(messages: Any = messages) -> bool:
                    return buffer.current(messages)

                try:
                    # A failed record is retried, then dead-lettered; a failed dependency is
                    # waited for (streams.failures): the batch goes through, or is given up
                    # when a rebalance took its partitions (their new owner reads it again).
                    outcome = await processor.on_batch(items, activate, written, still_ours)
                except BaseException:
                    buffer.forget(messages)  # failed: nothing of it is acknowledged
                    raise
                if outcome is None:
                    buffer.forget(messages)
        finally:  # stopping, or restarted on a rebalance: the last batch's commit finishes first
            await processor.drain()


def _timers(
    app: faust.App,
    settings: Settings,
    rules: SegmentRules,
    processor: Processor,
    orders: web.OrderPartitions,
    partitions: int,
) -> None:
    cache: Any = processor.handlers.stores.cache
    clock_topic = app.topic(
        settings.clock_topic, partitions=partitions, key_serializer="raw", value_serializer="raw"
    )

    @app.timer(REDIS_RETRY_SECONDS)
    async def keep_redis_in_step() -> None:
        """Retry failed writes; after Redis lost its data, write this worker's customers again."""
        try:
            if cache.pending:
                left = await cache.flush_pending()
                log.info("redis: %d customer writes still pending", left)
            if app.tables.recovery.in_recovery or app.rebalancing:
                return
            owned = {tp.partition for tp in orders.assigned()}
            missing = await cache.missing_markers(settings.app_id, owned)
            if missing:
                written = await processor.resync_cache(set(missing))
                for partition in missing:
                    await cache.set_marker(settings.app_id, partition)
                log.info("redis: wrote %d customers of partitions %s again", written, missing)
        except REDIS_FAILURES as exc:
            log.warning("redis unavailable: %s", exc)

    @app.timer(settings.clock_interval_seconds)
    async def clock_tick() -> None:
        ticks = processor.clock.reevaluation_ticks()
        if settings.clock == "wall":
            ticks += processor.clock.due_ticks(datetime.now(UTC))
        for partition, tick in ticks:
            await clock_topic.send(value=tick, partition=partition)

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
            if not recalibration_due(processor.models.calibrations.values(), last, now, interval):
                return
            attempted[:] = [now]
            try:
                published = await recalibrate(settings, rules, now)
            except Exception:  # tried again at the next check
                attempted.clear()
                log.exception("scheduled recalibration failed")
                return
            log.info("scheduled recalibration: %s", [c.version for c in published])

    probe = LagProbe(settings)
    metrics = processor.metrics

    @app.timer(LAG_INTERVAL_SECONDS)
    async def measure_lag() -> None:
        orders.keep_paused()
        try:
            await probe.start()
            partitions = [TopicPartition(tp.topic, tp.partition) for tp in orders.assigned()]
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


def _prediction_tasks(app: faust.App, settings: Settings, processor: Processor) -> None:
    """Every worker follows the predictions topic (the models on it at start-up are adopted
    before processing starts: ``streams.worker``); the leader refits on schedule (wall clock).
    A shop's newer model re-evaluates the shop's customers of this worker (churn risk, cause
    ``model_refit``; each written to Redis with the new predictions)."""
    predictions = processor.predictions

    async def adopt(model: Any) -> bool:
        adopted = await processor.set_prediction_model(model)
        if adopted:
            log.info(
                "prediction model %s: %d customers to re-evaluate",
                model.version,
                len(processor.clock.pending_reevaluation),
            )
        return adopted

    @app.task
    async def adopt_prediction_models() -> None:
        await follow_models(settings, adopt)

    interval = timedelta(hours=settings.prediction_fit_interval_hours)
    if settings.clock != "wall" or not interval:
        return
    attempted: list[datetime] = []

    @app.timer(min(interval.total_seconds(), RECALIBRATION_CHECK_SECONDS), on_leader=True)
    async def scheduled_prediction_fit() -> None:
        """Due by the oldest model the topic holds (see ``fit_due``)."""
        now = datetime.now(UTC)
        last = attempted[-1] if attempted else None
        if not fit_due(predictions.models.values(), last, now, interval):
            return
        attempted[:] = [now]
        try:
            report = await fit_and_publish(settings, now)
        except Exception:  # tried again at the next check
            attempted.clear()
            log.exception("scheduled prediction fit failed")
            return
        log.info(
            "scheduled prediction fit: %s published; no model for %s",
            [m.version for m in report.published],
            sorted(report.refused) or "no shop",
        )
        for reason in report.refused.values():
            log.info("no prediction model: %s", reason)
