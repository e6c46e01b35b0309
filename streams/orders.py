"""The per-event work of the worker: read the record, call the core, write the results.

One ``Processor`` serves the orders topic and the internal clock topic. It holds no business
logic: decisions come from ``models.transitions``; this module decodes, routes rejects to the
dead-letter topic, stores state, publishes transitions, caches in Redis and keeps the due index.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from models.events import SegmentChanged
from models.rules import SegmentRules
from models.state import CustomerState, compute_metrics, state_key
from models.transitions import OrderRejected, apply_order, due_transitions, next_due
from streams.clock import DueIndex
from streams.codecs import (
    DecodeError,
    decode_order,
    decode_stored,
    encode_stored,
    encode_transition,
)
from streams.dlq import DeadLetters, SourceRecord
from streams.redis_cache import RedisCache

log = logging.getLogger(__name__)


class Processor:
    """Applies order events and clock ticks to the customer table."""

    def __init__(
        self,
        *,
        table: MutableMapping[bytes, bytes],
        rules: SegmentRules,
        transitions_topic: Any,
        dead_letters: DeadLetters,
        cache: RedisCache,
        clock_mode: Literal["wall", "event"],
    ) -> None:
        self.table = table
        self.rules = rules
        self.transitions_topic = transitions_topic
        self.dead_letters = dead_letters
        self.cache = cache
        self.clock_mode = clock_mode
        self.index = DueIndex()
        self.counts: Counter[str] = Counter()

    # -- inputs -------------------------------------------------------------------------------

    async def on_order(self, record: SourceRecord) -> None:
        """One record of the orders topic; a record that cannot be used is dead-lettered."""
        try:
            order = decode_order(record.key, record.value, received_at=datetime.now(UTC))
        except DecodeError as exc:
            await self.dead_letters.send(record, exc.reason, str(exc))
            return
        self.counts[order.type] += 1
        partition = record.partition
        try:
            if self.clock_mode == "event":
                now = self.index.advance_watermark(partition, order.occurred_at)
                await self._fire_due(partition, now)
            state = self._load(state_key(order.shop_id, order.customer_id))
            new_state, transitions = apply_order(state, order, self.rules)
        except OrderRejected as exc:
            await self.dead_letters.send(record, exc.reason, str(exc))
            return
        except Exception as exc:  # a bug on one record must not stop the stream: park it, loudly
            log.exception("processing %s[%d]@%d failed", record.topic, partition, record.offset)
            await self.dead_letters.send(record, "processing_error", repr(exc))
            return
        if state is None or new_state.revision != state.revision:
            await self._save(partition, new_state, transitions)

    async def on_tick(self, record: SourceRecord) -> None:
        """A wall-clock tick for one customer that was due (see ``due_ticks``)."""
        try:
            tick = orjson.loads(record.value or b"")
            await self._fire_key(record.partition, tick["key"], datetime.fromisoformat(tick["now"]))
        except Exception as exc:
            log.exception(
                "clock tick %s[%d]@%d failed", record.topic, record.partition, record.offset
            )
            await self.dead_letters.send(record, "processing_error", repr(exc))

    # -- time ---------------------------------------------------------------------------------

    async def _fire_due(self, partition: int, now: datetime) -> None:
        for key in self.index.pop_due(partition, now):
            await self._fire_key(partition, key, now)

    async def _fire_key(self, partition: int, key: str, now: datetime) -> None:
        state = self._load(key)
        if state is None:
            return
        new_state, transitions = due_transitions(state, now, self.rules)
        if new_state.revision != state.revision:
            await self._save(partition, new_state, transitions)
        else:
            self.index.schedule(partition, key, next_due(state, self.rules))

    def due_ticks(self, now: datetime) -> list[tuple[int, bytes]]:
        """Wall-clock mode: (partition, tick) for every customer due at ``now``."""
        ticks = []
        for partition in self.index.partitions():
            for key in self.index.pop_due(partition, now):
                tick = orjson.dumps({"key": key, "now": now.isoformat()})
                ticks.append((partition, tick))
        return ticks

    def stats(self) -> dict[str, Any]:
        """Counters for operators (served by the worker at ``/stats``)."""
        return {
            "events": dict(self.counts),
            "dead_letters": dict(self.dead_letters.counts),
            "customers_with_due_time": len(self.index),
            "redis": {"pending_writes": self.cache.pending, "write_errors": self.cache.errors},
        }

    async def rebuild_index(self) -> None:
        """After recovery or a rebalance: due times and watermarks from the table's contents.

        Yields to the event loop now and then, so a large table does not starve the consumer's
        heartbeats; a value that cannot be decoded is logged and skipped, never fatal.
        """
        self.index.clear()
        failed = 0
        for count, value in enumerate(self.table.values(), start=1):
            try:
                partition, state = decode_stored(value)
                self.index.schedule(partition, state.key, next_due(state, self.rules))
            except Exception:
                failed += 1
                log.exception("cannot index a stored customer state")
                continue
            if state.as_of is not None:
                self.index.advance_watermark(partition, state.as_of)
            if count % 1000 == 0:
                await asyncio.sleep(0)
        log.info(
            "due index rebuilt: %d customers with a due time, %d unreadable states",
            len(self.index),
            failed,
        )

    # -- outputs ------------------------------------------------------------------------------

    def _load(self, key: str) -> CustomerState | None:
        value = self.table.get(key.encode())
        return None if value is None else decode_stored(value).state

    async def _save(
        self, partition: int, state: CustomerState, transitions: list[SegmentChanged]
    ) -> None:
        self.table[state.key.encode()] = encode_stored(partition, state)
        emitted_at = datetime.now(UTC)
        for transition in transitions:
            self.counts[transition.transition] += 1
            await self.transitions_topic.send(
                key=transition.customer_id.encode(),
                value=encode_transition(transition, emitted_at),
            )
        at = state.as_of or emitted_at
        await self.cache.write([(state, compute_metrics(state, at, self.rules))])
        self.index.schedule(partition, state.key, next_due(state, self.rules))
