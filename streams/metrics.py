"""Prometheus metrics of a worker (prometheus-client, one registry per worker).

Every name here is what the Grafana dashboard and the alert rules in ``ops/`` may use; a test
checks that they use nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streams.dlq import REASONS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class WorkerMetrics:
    """The instruments; gauges that are cheaper to compute at scrape time take callbacks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.lag_messages = Gauge(
            "segmenter_consumer_lag_messages",
            "Log end offset minus committed offset, per assigned input partition",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "segmenter_consumer_lag_seconds",
            "Age of the oldest unprocessed record, per assigned input partition (0: none)",
            ["topic", "partition"],
            registry=r,
        )
        self.events = Counter(
            "segmenter_events_total", "Order events processed, by type", ["type"], registry=r
        )
        self.unmatched = Counter(
            "segmenter_unmatched_total",
            "Cancellations and refunds of an order the customer's state does not hold (yet): "
            "kept until the order arrives; a steady count means a wrong order_id or shop_id",
            ["type"],
            registry=r,
        )
        self.misrouted = Counter(
            "segmenter_misrouted_records_total",
            "Order records (every 64th is checked) in another partition than Kafka's default "
            "partitioner gives their key",
            registry=r,
        )
        self.record_failures = Counter(
            "segmenter_record_failures_total",
            "Failed attempts at processing a batch, by what failed: a record (dead-lettered "
            "after a few attempts) or a dependency (Redis, the broker, the local disk: retried "
            "until it answers)",
            ["kind"],
            registry=r,
        )
        for kind in ("record", "dependency"):
            self.record_failures.labels(kind)
        self.skipped_erased = Counter(
            "segmenter_skipped_erased_total",
            "Orders of an erased customer skipped (a fresh state starts only with new consent)",
            registry=r,
        )
        self.processing = Histogram(
            "segmenter_processing_seconds",
            "From receiving an order record to having written its results",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transition_delay = Histogram(
            "segmenter_transition_delay_seconds",
            "From a live transition's event time to its emission (backfills excluded)",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "segmenter_transitions_total",
            "Transitions emitted, by transition name and cause",
            ["transition", "cause"],
            registry=r,
        )
        self.dead_letters = Counter(
            "segmenter_dead_letters_total",
            "Records dead-lettered, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:  # at 0 from the start: an increase() sees the first one
            self.dead_letters.labels(reason)
        self.redis_write = Histogram(
            "segmenter_redis_write_seconds",
            "Duration of one batch's Redis write",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "segmenter_redis_errors_total", "Failed Redis writes (kept and retried)", registry=r
        )
        self.rebalances = Counter(
            "segmenter_rebalances_total", "Consumer group rebalances seen", registry=r
        )

    def labelled(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: the per-record counters would otherwise
        look their child up (and check the label values) once per record."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def event_counts(self) -> dict[str, int]:
        """What ``/stats`` calls events: input events by type, transitions by name, and the
        misrouted, skipped and unmatched records (each only once it happened)."""
        counts: dict[str, int] = {}
        for metric, key in (
            (self.events, lambda labels: labels["type"]),
            (self.transitions, lambda labels: labels["transition"]),
            (self.misrouted, lambda _labels: "misrouted"),
            (self.skipped_erased, lambda _labels: "skipped_erased"),
            (self.unmatched, lambda labels: f"unmatched_{labels['type']}"),
        ):
            for _name, labels, value in _totals(metric):
                if value:
                    counts[key(labels)] = counts.get(key(labels), 0) + int(value)
        return counts

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by reason (each reason only once it happened)."""
        return {
            labels["reason"]: int(value)
            for _name, labels, value in _totals(self.dead_letters)
            if value
        }

    def callback_gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        gauge = Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def names(self) -> set[str]:
        """Every sample name this registry can expose (with _total, _bucket, ... suffixes),
        whether or not a labelled child has been created yet."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",),
        }
        return {
            family.name + suffix
            for family in self.registry.collect()
            for suffix in suffixes.get(family.type, ("",))
        }


def _totals(metric: Any) -> list[tuple[str, dict[str, str], float]]:
    """A counter's ``_total`` samples: (name, labels, value)."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
