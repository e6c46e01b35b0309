"""In-memory stand-ins for the worker's adapters (the outbox, the tables, Redis), for tests of
the processing's own logic: the commit protocol, the clock, the handlers. The real adapters
are tested against the real broker and Redis in tests/integration."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from config.rules import load_rules
from models.insights import Activity
from models.routing import Routing
from models.rules import SegmentRules
from streams.checkpoint import Checkpoint
from streams.clock import Clock, ClockMode, InputEnd
from streams.dlq import DeadLetters
from streams.handlers import Handlers, Outputs, Stores
from streams.insights.tables import Insights
from streams.metrics import WorkerMetrics
from streams.processor import Processor
from streams.shop_models import ShopModels
from streams.sink import Topics, TransitionSink


class Log(list[tuple[str, Any]]):
    """What happened, in order; ``batches[i]``: the batch whose record was the current event
    (set by the batch's ``activate``) when entry ``i`` happened."""

    def __init__(self) -> None:
        super().__init__()
        self.batch: int | None = None
        self.batches: list[int | None] = []

    def append(self, entry: tuple[str, Any]) -> None:
        super().append(entry)
        self.batches.append(self.batch)

    def activate(self, batch: int) -> Any:
        return lambda _index: setattr(self, "batch", batch)


def _delivery(manual: bool, pending: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """A delivery acknowledged at once, or (``manual``) kept in ``pending`` to be by hand."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if manual:
        pending.append(future)
    else:
        future.set_result(None)
    return future


class Outbox:
    """Holds records until ``send``; logs ("send", event id) per record sent. Deliveries are
    acknowledged at once, or (``manual``) only when ``ack_all`` is called."""

    def __init__(self, log: list[tuple[str, Any]], manual: bool = False) -> None:
        self.log = log
        self.manual = manual
        self.held: list[tuple[str, bytes, bytes | None]] = []
        self.sent: list[tuple[str, bytes, bytes | None]] = []  # every record sent, in order
        self.pending: list[asyncio.Future[None]] = []
        self.flushes = 0

    def add(self, topic: str, key: bytes, value: bytes | None) -> None:
        self.held.append((topic, key, value))

    async def send(self) -> list[asyncio.Future[None]]:
        held, self.held = self.held, []
        self.sent += held
        self.flushes += 1
        self.log.append(("flush", len(held)))
        return [self._sent(value) for _topic, _key, value in held]

    def clear(self) -> None:
        self.held = []

    def _sent(self, value: bytes | None) -> asyncio.Future[None]:
        body = orjson.loads(value or b"{}")
        self.log.append(("send", body.get("event_id") or body["id"]))  # a transition
        return _delivery(self.manual, self.pending)

    def ack_all(self) -> None:
        for future in self.pending:
            future.set_result(None)
        self.pending.clear()


class Topic:
    """A topic whose ``send`` returns the delivery: acknowledged at once, or (``manual``) by
    hand through ``pending``."""

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.sent: list[tuple[Any, Any]] = []
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, key: Any, value: Any, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append((key, value))
        return _delivery(self.manual, self.pending)


Row = tuple[int, bytes, bytes]


class Store(dict[bytes, bytes]):
    """A table: ``put_many`` logs ("write", key) per row and counts writes per key; ``durable``
    waits for ``gate`` when one is set."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.log = log
        self.writes: Counter[bytes] = Counter()
        self.calls: list[list[Row]] = []
        self.gate: asyncio.Event | None = None

    def get(self, partition: int, key: bytes) -> bytes | None:  # type: ignore[override]
        return super().get(key)

    def put_many(self, rows: Sequence[Row]) -> None:
        if rows:
            self.calls.append(list(rows))
            self.log.append(("rows", len(rows)))
        for _partition, key, value in rows:
            self.log.append(("write", key))
            self.writes[key] += 1
            self[key] = value

    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:  # like a Faust table: a tombstone, even if absent
        self.log.append(("delete", key))
        super().pop(key, None)

    def pop(self, key: bytes, default: Any = None) -> Any:  # type: ignore[override]
        return super().pop(key, default)

    def delete_in(self, partition: int, key: bytes, *, stored: bool = True) -> None:
        """A tombstone on ``partition``; the key deleted only if ``stored`` (one map for every
        partition, like Faust's memory store)."""
        self.log.append(("tombstone", (partition, key)))
        if stored:
            super().pop(key, None)

    async def durable(self) -> None:
        if self.gate is not None:
            await self.gate.wait()


class InsightTables(Insights):
    """The segment insights' tables over in-memory stores: ``added`` holds every activity
    record added up, in order; ``rows`` and ``durable`` are logged to the worker's log."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.customers = Store(Log())  # type: ignore[assignment]
        self.totals = Store(Log())  # type: ignore[assignment]
        self.dirty: set[bytes] = set()
        self.added: list[tuple[int, Activity]] = []

    def rows(self, activity: Sequence[tuple[int, Activity]]) -> Any:
        self.log.append(("insights", len(activity)))
        self.added += activity
        return super().rows(activity)

    async def durable(self) -> None:
        self.log.append(("insights durable", len(self.added)))


class Cache:
    pending = 0
    errors = 0

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.written: dict[str, int] = {}
        self.figures: dict[str, Any] = {}  # the last figures written per customer
        self.calls = 0

    async def write(self, items: Any) -> None:
        items = list(items)
        if items:
            self.calls += 1
            self.log.append(("redis", len(items)))
        for state, metrics in items:
            self.written[state.key] = max(self.written.get(state.key, 0), state.revision)
            self.figures[state.key] = metrics

    async def remove(self, shop_id: str, customer_id: str, partition: int | None = None) -> bool:
        self.log.append(("remove", (shop_id, customer_id, partition)))
        return True


class Worker:
    """A processor over fakes, and the fakes."""

    def __init__(
        self,
        *,
        manual: bool = False,
        clock: ClockMode = "event",
        input_end: InputEnd | None = None,
        rules: SegmentRules | None = None,
        partitions: int | None = None,
        backfill: bool = True,
        insights: bool = False,
    ) -> None:
        self.log = Log()
        self.outbox = Outbox(self.log, manual)
        self.table = Store(self.log)
        self.erasures = Store(Log())
        self.cache = Cache(self.log)
        self.dead_letters = Topic()
        self.receipts = Topic()
        self.failures: list[BaseException] = []
        metrics = WorkerMetrics()
        sink = TransitionSink(
            self.outbox,
            Topics("transitions", {}, insights),
            Routing(frozenset(), backfill),
            metrics,
        )
        self.insights = InsightTables(self.log) if insights else None
        checkpoint = Checkpoint(self.table, self.cache, sink, self.failures.append, self.insights)
        handlers = Handlers(
            ShopModels(rules or load_rules(), {}),
            Stores(self.table, self.erasures, self.cache, partitions),
            Outputs(sink, DeadLetters(self.dead_letters), self.receipts),
            checkpoint,
            Clock(clock, input_end),
            metrics,
        )
        self.processor = Processor(handlers)
        # The backoffs of retried batches and of a full disk, recorded instead of waited out.
        self.waits: list[float] = []
        self.processor.retries.wait = checkpoint.wait = self._waited

    async def _waited(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)

    def sent(self) -> list[str]:
        """Event ids of the transitions sent, in order."""
        return [item for kind, item in self.log if kind == "send"]
