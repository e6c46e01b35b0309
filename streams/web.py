"""A worker's HTTP surface and gauges: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``,
``/stats``, and ``/pause`` and ``/resume`` for maintenance (POST: with the admin token only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import faust
from faust.web import View

from config.settings import Settings
from streams.processor import Processor
from streams.topics import broker_answers
from streams.web_access import admin_refusal

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"
# A time-caused transition later than this after its due time counts as overdue.
OVERDUE_GRACE_SECONDS = 5.0
# /readyz asks the brokers at most this often (each check opens an admin connection).
BROKER_CHECK_SECONDS = 5.0


class CachedCheck:
    """A check whose answer is reused for ``ttl`` seconds; callers arriving while it runs wait
    for that answer instead of running it again."""

    def __init__(
        self,
        check: Callable[[], Awaitable[bool]],
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._answer = False
        self._checked_at: float | None = None

    async def __call__(self) -> bool:
        async with self._lock:
            if self._checked_at is None or self._clock() - self._checked_at >= self._ttl:
                self._answer = await self._check()
                self._checked_at = self._clock()
            return self._answer


class OrderPartitions:
    """The worker's orders partitions, and whether an operator paused fetching them."""

    def __init__(self, app: faust.App, orders_topic: str) -> None:
        self.app = app
        self.orders_topic = orders_topic
        self.paused = False

    def assigned(self) -> set[Any]:
        return {tp for tp in self.app.consumer.assignment() if tp.topic == self.orders_topic}

    def pause(self, on: bool) -> dict[str, bool]:
        self.paused = on
        if on:
            self.app.consumer.pause_partitions(self.assigned())
        else:
            self.app.consumer.resume_partitions(self.assigned())
        return {"paused": on}

    def keep_paused(self) -> None:
        """A rebalance may have resumed them: keep the operator's word."""
        if self.paused:
            self.app.consumer.pause_partitions(self.assigned())


def register(app: faust.App, settings: Settings, processor: Processor) -> OrderPartitions:
    """The gauges and the views; returns the orders partitions the views pause and resume."""
    orders = OrderPartitions(app, settings.orders_topic)
    _gauges(app, processor, orders)
    _views(app, settings, processor, orders)
    return orders


def _gauges(app: faust.App, processor: Processor, orders: OrderPartitions) -> None:
    recovery = app.tables.recovery
    metrics = processor.metrics
    clock = processor.clock
    cache: Any = processor.handlers.stores.cache
    gauge = metrics.callback_gauge

    def overdue() -> list[datetime]:
        return clock.overdue(datetime.now(UTC), OVERDUE_GRACE_SECONDS)

    def oldest_overdue() -> float:
        late = overdue()
        return (datetime.now(UTC) - min(late)).total_seconds() if late else 0.0

    gauge(
        "segmenter_table_customers",
        "Customers in this worker's table partitions",
        lambda: processor.customers,
    )
    gauge(
        "segmenter_due_customers",
        "Customers with a due time in this worker's index",
        lambda: len(clock.index),
    )
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
        lambda: len(clock.pending_reevaluation),
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
        lambda: 1.0 if orders.paused else 0.0,
    )

    @app.on_partitions_revoked.connect
    def count_rebalance(sender: Any, revoked: Any, **_: Any) -> None:
        metrics.rebalances.inc()


def _views(
    app: faust.App, settings: Settings, processor: Processor, orders: OrderPartitions
) -> None:
    recovery = app.tables.recovery
    metrics = processor.metrics
    cache: Any = processor.handlers.stores.cache
    broker = CachedCheck(lambda: broker_answers(settings), BROKER_CHECK_SECONDS)

    def refused(view: View, request: Any) -> Any:
        """The response refusing a state-changing request, or None if it may go ahead."""
        refusal = admin_refusal(settings.admin_token, request.headers)
        if refusal is None:
            return None
        return view.json({"error": refusal.error}, status=refusal.status, headers=refusal.headers)

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
        """Recovery finished, the broker and Redis reachable, the local disk not full: ready
        for traffic."""
        checks = {
            "recovered": recovery.completed.is_set()
            and not recovery.in_recovery
            and not app.rebalancing,
            "broker": await broker(),
            "redis": await cache.ping(),
            "disk": not processor.disk_full,
        }
        ready = all(checks.values())
        return web.json({"ready": ready, "checks": checks}, status=200 if ready else 503)

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Any:
        """Counters since the worker started: events by type, transitions, dead letters."""
        return web.json({**processor.stats(), "paused": orders.paused})

    def pausing(on: bool, doc: str) -> type[View]:
        class Pausing(View):
            __doc__ = doc

            async def get(self, request: Any) -> Any:
                return self.json({"paused": orders.paused})

            async def post(self, request: Any) -> Any:
                refusal = refused(self, request)
                if refusal is not None:
                    return refusal
                if not on and recovery.in_recovery:  # recovery resumes the partitions itself
                    return self.json({"paused": orders.paused, "error": "recovering"}, status=409)
                return self.json(orders.pause(on))

        return Pausing

    app.page("/pause")(
        pausing(True, "POST: stop fetching orders (maintenance; lag builds up). GET: the state.")
    )
    app.page("/resume")(pausing(False, "POST: fetch orders again. GET: the state."))
