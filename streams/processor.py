"""A worker's processing, assembled: the shop models, the clock, the checkpoint and the
handlers; and the scans of the whole table they need (after recovery or a rebalance, after a
new calibration, after Redis lost its data)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from models.churn import merged_due
from models.due import next_due
from models.predictions import PredictionModel
from models.privacy import consented
from models.scoring import Calibration
from models.segment_model import needs_reevaluation
from models.state import CustomerState
from streams.checkpoint import Checkpoint, Handler
from streams.churn_layer import ChurnLayer
from streams.clock import Clock
from streams.codecs import decode_header, decode_stored
from streams.dlq import SourceRecord
from streams.failures import Outcome, Retries
from streams.handlers import Handlers, cache_figures
from streams.metrics import WorkerMetrics
from streams.predictions import ShopPredictions
from streams.shop_models import ShopModels

log = logging.getLogger(__name__)


class Processor:
    """The handlers of one worker, with the scans and the counters operators read."""

    def __init__(self, handlers: Handlers, predictions: ShopPredictions | None = None) -> None:
        self.handlers = handlers
        self.models: ShopModels = handlers.models
        self.clock: Clock = handlers.clock
        self.checkpoint: Checkpoint = handlers.checkpoint
        self.metrics: WorkerMetrics = handlers.metrics
        self.on_order = handlers.on_order
        self.on_consent = handlers.on_consent
        self.on_erasure = handlers.on_erasure
        self.on_tick = handlers.on_tick
        # The shops' prediction models (adopted from the predictions topic), which the
        # handlers' churn-risk layer evaluates customers under.
        self.predictions = predictions or ShopPredictions()
        self.models.follow_predictions(self.predictions.models)  # rules may ask them
        handlers.churn = ChurnLayer(self.predictions, self.models)
        metrics = self.metrics
        self.retries = Retries(
            handlers.dead_letter,
            lambda kind: metrics.record_failures.labels(kind).inc(),
            self._reopen_stores,
        )
        metrics.callback_gauge(
            "segmenter_stuck_partitions",
            "Input partitions whose batch is being retried after a failure (a record failing "
            "again and again, or Redis, the broker or the local disk not answering)",
            lambda: len(self.retries.stuck),
        )
        metrics.callback_gauge(
            "segmenter_disk_full",
            "1 while the local store cannot be written for lack of space (writes wait)",
            lambda: float(self.disk_full),
        )

    def _reopen_stores(self) -> None:
        stores = self.handlers.stores
        for store in (stores.customers, stores.erasures):
            reopen = getattr(store, "reopen", None)  # a store with databases to open again
            if reopen is not None:
                reopen()

    @property
    def disk_full(self) -> bool:
        """The local store cannot be written for lack of space: processing waits for room."""
        return self.checkpoint.disk_full or self.retries.disk_full

    @property
    def customers(self) -> int:
        """Customers in the table of this worker's partitions."""
        return self.handlers.customers

    async def on_batch(
        self,
        items: Sequence[tuple[SourceRecord, Handler]],
        activate: Callable[[int], None],
        written: Callable[[], Awaitable[None]] | None = None,
        still_ours: Callable[[], bool] = lambda: True,
    ) -> Outcome | None:
        """Process a batch, with retries (``streams.failures``); None if its partitions were
        taken away while it was retried."""

        async def process(batch: Sequence[tuple[SourceRecord, Handler]]) -> None:
            await self.checkpoint.run(batch, activate, written)

        try:
            return await self.retries.run(process, items, still_ours)
        finally:
            self.handlers.batch_done()

    async def drain(self) -> None:
        await self.checkpoint.drain()

    async def set_calibration(self, calibration: Calibration) -> bool:
        """Adopt a shop's newer calibration; True if adopted (its customers get re-evaluated)."""
        if not self.models.adopt(calibration):
            return False
        self.clock.pending_reevaluation += await self._stale_customers(calibration.shop_id)
        return True

    async def set_prediction_model(self, model: PredictionModel, replayed: bool = False) -> bool:
        """Adopt a shop's newer prediction model; True if adopted. Unless ``replayed`` (read
        again from the topic at start-up: already in force when the stored states were
        written), the shop's customers are re-evaluated under it (cause ``model_refit``: their
        churn-risk moves, their crossing instants scheduled again)."""
        before = self.predictions.model_for(model.shop_id)
        if not self.predictions.adopt(model):
            return False
        self.models.prediction_adopted(model.shop_id)
        if not replayed:
            customers = await self._shop_customers(model.shop_id)
            self.handlers.churn.refitted([key for _, key in customers], before)
            self.clock.pending_reevaluation += customers
        return True

    async def _shop_customers(self, shop_id: str) -> list[tuple[int, str]]:
        """(partition, key) of every customer of the shop (see ``_scan_shop``)."""
        return await self._scan_shop(shop_id, lambda _state: True, lambda _header: True)

    async def _stale_customers(self, shop_id: str) -> list[tuple[int, str]]:
        """Customers of the shop evaluated under another rule set or calibration (see
        ``_scan_shop``)."""
        model = self.models.model_for(shop_id)
        versions = (model.rules.version, model.calibration.version)
        return await self._scan_shop(
            shop_id,
            lambda state: needs_reevaluation(state, model),
            lambda header: (header.rule_version, header.calibration_version) != versions,
        )

    async def _scan_shop(
        self,
        shop_id: str,
        state_wanted: Callable[[CustomerState], bool],
        header_wanted: Callable[[Any], bool],
    ) -> list[tuple[int, str]]:
        """(partition, key) of the shop's customers that are wanted, in the table or only in a
        batch not written yet, once each; yields to the event loop now and then, skips (and
        logs) values it cannot read. A stored value is judged by its header where it has one
        (no state decoded), else by its state."""
        # States of the running batch and of the one being committed: they reach the table only
        # after this scan has passed them, or never if no later record touches the customer.
        found = [
            (change.partition, change.state.key)
            for change in self.checkpoint.staged_changes()
            if change.state.shop_id == shop_id and state_wanted(change.state)
        ]
        prefix = f"{shop_id}/".encode()
        for count, (key, value) in enumerate(self.handlers.stores.customers.items(), start=1):
            if count % 1000 == 0:
                await asyncio.sleep(0)
            if not key.startswith(prefix):
                continue
            try:
                header = decode_header(value)
                if header is None:
                    partition, state = decode_stored(value)
                    if state_wanted(state):
                        found.append((partition, state.key))
                elif header_wanted(header):
                    found.append((header.partition, header.key))
            except Exception:
                log.exception("cannot read the stored state of %r", key)
        return list(dict.fromkeys(found))  # once each, in the table too or not

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
        self.clock.reset()
        self.handlers.churn.reset()
        failed = 0
        count = 0
        for count, value in enumerate(self.handlers.stores.customers.values(), start=1):
            try:
                self._index_value(value)
            except Exception:
                failed += 1
                log.exception("cannot index a stored customer state")
            if count % 1000 == 0:
                await asyncio.sleep(0)
        self.handlers.customers = count
        log.info(
            "due index rebuilt: %d customers with a due time, %d to re-evaluate, %d unreadable",
            len(self.clock.index),
            len(self.clock.pending_reevaluation),
            failed,
        )

    def _index_value(self, value: bytes) -> None:
        """Schedule one stored customer: from the stored due time when the state was evaluated
        under the current rules and calibration (no decoding of the state), else in full. A
        customer whose churn risk was judged under another prediction model than the shop's
        (a refit not yet applied when the worker stopped, a model published while none ran)
        is re-evaluated too (cause ``model_refit``)."""
        header = decode_header(value)
        queued = False
        if header is not None and self.handlers.churn.stale(header.shop_id, header.judged):
            self.handlers.churn.restored(header.key, header.judged)
            self.clock.pending_reevaluation.append((header.partition, header.key))
            queued = True
        if header is not None and not self.models.rules.uses_predictions:
            model = self.models.model_for(header.shop_id)
            if (header.rule_version, header.calibration_version) == (
                model.rules.version,
                model.calibration.version,
            ):
                self.clock.index.schedule(header.partition, header.key, header.due)
                return
        # No header, or decided under other rules or cut-offs: decode, re-evaluate soon.
        partition, state = decode_stored(value)
        model = self.models.model_for(state.shop_id)
        if needs_reevaluation(state, model) and not queued:
            self.clock.pending_reevaluation.append((partition, state.key))
        churn = self.handlers.churn.due(state, consented(state, model.consent_required))
        self.clock.index.schedule(partition, state.key, merged_due(next_due(state, model), churn))

    async def resync_cache(
        self, partitions: set[int], batch: int = 500, shop: str | None = None
    ) -> int:
        """Write every consenting customer of ``partitions`` (of ``shop`` only, if given) to
        Redis again (after Redis lost its data, after a shop's new prediction model); returns
        how many. Yields to the event loop between batches."""
        cache = self.handlers.stores.cache
        written = 0
        pending: list[tuple[CustomerState, Any]] = []
        for value in list(self.handlers.stores.customers.values()):
            try:
                partition, state = decode_stored(value)
            except Exception:
                log.exception("cannot read a stored customer state")
                continue
            if shop is not None and state.shop_id != shop:
                continue
            model = self.models.model_for(state.shop_id)
            if partition not in partitions or not consented(state, model.consent_required):
                continue
            pending.append((state, cache_figures(state, model)))
            if len(pending) >= batch:
                await cache.write(pending)
                written += len(pending)
                pending = []
                await asyncio.sleep(0)
        if pending:
            await cache.write(pending)
            written += len(pending)
        return written

    def stats(self) -> dict[str, Any]:
        """Counters for operators (served by the worker at ``/stats``)."""
        cache: Any = self.handlers.stores.cache
        return {
            "events": self.metrics.event_counts(),
            "dead_letters": self.metrics.dead_letter_counts(),
            "customers_with_due_time": len(self.clock.index),
            "pending_reevaluation": len(self.clock.pending_reevaluation),
            "calibrations": {s: c.version for s, c in sorted(self.models.calibrations.items())},
            "prediction_models": {s: m.version for s, m in sorted(self.predictions.models.items())},
            "redis": {"pending_writes": cache.pending, "write_errors": cache.errors},
        }
