"""The Faust app: topics, the customer table, the agent and the timers, wired from settings.

``create_app`` is the one place that builds clients (no connection at import time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust

from config.settings import Settings
from models.events import transition_name, transition_names
from models.rules import SegmentRules
from models.scoring import Calibration
from streams.calibrations import follow_calibrations, recalibrate
from streams.dlq import DeadLetters, SourceRecord
from streams.orders import Outputs, Processor
from streams.redis_cache import RedisCache

log = logging.getLogger(__name__)

REDIS_RETRY_SECONDS = 2.0


@dataclass
class Segmenter:
    app: faust.App
    processor: Processor
    cache: RedisCache


def broker_urls(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{s.strip()}" for s in bootstrap_servers.split(",") if s.strip())


def marketing_transitions(rules: SegmentRules) -> list[str]:
    """Transition names with a marketing topic of their own (segments may opt out)."""
    quiet = {transition_name(s.name) for s in rules.segments if not s.marketing}
    return [name for name in transition_names(rules.segment_names) if name not in quiet]


def create_app(
    settings: Settings,
    rules: SegmentRules,
    partitions: int,
    calibrations: dict[str, Calibration],
) -> Segmenter:
    """Build the app for a given orders topic partition count (see ``ensure_topics``) and the
    shops' current calibrations (see ``read_calibrations``)."""
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap_servers),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=settings.web_port != 0,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        autodiscover=False,
        processing_guarantee="at_least_once",
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    clock = app.topic(settings.clock_topic, partitions=partitions, **raw)
    transitions = app.topic(settings.transitions_topic, **raw)
    dlq = app.topic(settings.dlq_topic, **raw)
    table = app.Table(
        settings.table_name,
        partitions=partitions,
        key_type=bytes,  # bytes in, bytes out: streams.codecs owns the encoding
        value_type=bytes,
    )
    cache = RedisCache.from_url(settings.redis_url, settings.redis_prefix)
    outputs = Outputs(
        transitions=transitions,
        marketing={
            name: app.topic(settings.marketing_topic(name), **raw)
            for name in marketing_transitions(rules)
        },
        backfill=settings.is_backfill,
        marketing_skip_backfill=settings.marketing_skip_backfill,
        marketing_skip_causes=frozenset(settings.marketing_skip_causes),
    )
    processor = Processor(
        table=table,
        rules=rules,
        calibrations=calibrations,
        outputs=outputs,
        dead_letters=DeadLetters(dlq),
        cache=cache,
        clock_mode=settings.clock,
    )
    source = app.topic(settings.orders_topic, settings.clock_topic, **raw)

    @app.agent(source, name="segmenter.process")
    async def process(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            record = SourceRecord(
                message.key, message.value, message.topic, message.partition, message.offset
            )
            if message.topic == settings.clock_topic:
                await processor.on_tick(record)
            else:
                await processor.on_order(record)

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        """Counters since the worker started: events by type, transitions, dead letters."""
        return web.json(processor.stats())

    @table.on_recover
    async def rebuild_due_index() -> None:
        await processor.rebuild_index()

    @app.timer(REDIS_RETRY_SECONDS)
    async def retry_redis() -> None:
        if cache.pending:
            left = await cache.flush_pending()
            log.info("redis: %d customer writes still pending", left)

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

    interval = settings.recalibration_interval_hours * 3600
    if settings.clock == "wall" and rules.scoring.mode == "quantile" and interval > 0:

        @app.timer(interval, on_leader=True)
        async def scheduled_recalibration() -> None:
            published = await recalibrate(settings, rules, datetime.now(UTC))
            log.info("scheduled recalibration: %s", [c.version for c in published])

    return Segmenter(app=app, processor=processor, cache=cache)
