"""Settings turned into the worker's parts: the Redis cache, the metrics, the stores, the
transition sink and the processing that uses them. The one place where adapters are wired;
nothing connects at import time."""

from __future__ import annotations

import logging
import os
from typing import Any

import faust

from config.settings import Settings
from models.routing import Routing, marketing_transitions
from models.rules import SegmentRules
from models.scoring import Calibration
from streams.checkpoint import Checkpoint, Insights
from streams.clock import Clock
from streams.dlq import DeadLetters
from streams.framework.consumer import input_end
from streams.framework.outbox import Outbox, app_producer
from streams.framework.tables import ChangelogAcks, TableStore
from streams.handlers import Handlers, Outputs, Stores
from streams.metrics import WorkerMetrics
from streams.predictions import ShopPredictions
from streams.processor import Processor
from streams.redis_cache import RedisCache
from streams.removals import RemovalJournal
from streams.shop_models import Privacy, ShopModels
from streams.sink import Topics, TransitionSink

log = logging.getLogger(__name__)

# The exit status of a worker that stopped because a batch could not be written (EX_TEMPFAIL).
WRITE_FAILED_EXIT = 75


def build_processor(
    app: faust.App,
    settings: Settings,
    rules: SegmentRules,
    calibrations: dict[str, Calibration],
    tables: tuple[Any, Any],
    partitions: int,
    insights: Insights | None = None,
) -> Processor:
    """The processing of a worker of ``app``, over its customers and erasures ``tables``; with
    the segment insights' tables if given."""
    customers, erasures = tables
    metrics = WorkerMetrics()

    def observe_redis(seconds: float, ok: bool) -> None:
        metrics.redis_write.observe(seconds)
        if not ok:
            metrics.redis_errors.inc()

    cache = RedisCache.from_url(
        settings.redis_url.get_secret_value(),
        settings.redis_prefix,
        observe_redis,
        cluster=settings.redis_cluster,
        segments=rules.segment_names,
    )
    acks = ChangelogAcks(app)
    stores = Stores(
        customers=TableStore(customers, acks),
        erasures=TableStore(erasures, acks),
        cache=cache,
        partitions=partitions,
    )
    # failed Redis removals are stored in the erasures table until Redis answers again
    cache.journal = RemovalJournal(stores.erasures)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    sink = TransitionSink(
        Outbox(app_producer(app)), topics(settings, rules), routing(settings, rules), metrics
    )
    dlq = app.topic(settings.dlq_topic, **raw)
    outputs = Outputs(
        sink=sink,
        dead_letters=DeadLetters(
            dlq,
            lambda reason: metrics.dead_letters.labels(reason).inc(),
            # a reason's message may quote the record's raw ids: kept out of the log then
            log_messages=settings.secret is None,
        ),
        receipts=app.topic(settings.erasure_receipts_topic, **raw),
    )
    privacy = Privacy(consent_required=settings.consent_required, secret=settings.secret)
    models = ShopModels(rules, calibrations, privacy)
    clock = Clock(
        settings.clock,
        input_end(app, settings.orders_topic) if settings.clock == "wall" else None,
    )
    checkpoint = Checkpoint(stores.customers, cache, sink, stop_after_failed_write, insights)
    # The predictions are written with each state (computed from it, outside the fold).
    predictions = ShopPredictions.from_settings(settings)
    cache.extra_fields = predictions.fields
    return Processor(Handlers(models, stores, outputs, checkpoint, clock, metrics), predictions)


def topics(settings: Settings, rules: SegmentRules) -> Topics:
    """The topics the worker's transitions go to."""
    return Topics(
        transitions=settings.transitions_topic,
        marketing={name: settings.marketing_topic(name) for name in marketing_transitions(rules)},
        insights=settings.insights,
    )


def routing(settings: Settings, rules: SegmentRules) -> Routing:
    """Which of the worker's transitions go to the marketing topics."""
    return Routing(
        marketing=frozenset(marketing_transitions(rules)),
        backfill=settings.is_backfill,
        skip_backfill=settings.marketing_skip_backfill,
        skip_causes=frozenset(settings.marketing_skip_causes),
    )


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
