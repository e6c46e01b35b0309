"""The dashboard and alert rules only use metrics the worker really exports; compose wires them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.rules import load_rules
from config.settings import Settings
from streams.app import create_app

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bsegmenter_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    segmenter = create_app(Settings(web_port=0), load_rules(), 2, {})
    return segmenter.processor.metrics.names()


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "ops/grafana/dashboards/segmenter.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def _alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_the_worker_exports_what_the_issue_asks_for(exported: set[str]) -> None:
    for name in (
        "segmenter_consumer_lag_messages",
        "segmenter_consumer_lag_seconds",
        "segmenter_events_total",
        "segmenter_processing_seconds_bucket",
        "segmenter_transition_delay_seconds_bucket",
        "segmenter_transitions_total",
        "segmenter_dead_letters_total",
        "segmenter_redis_write_seconds_bucket",
        "segmenter_redis_errors_total",
        "segmenter_overdue_customers",
        "segmenter_oldest_overdue_seconds",
        "segmenter_table_customers",
        "segmenter_rebalances_total",
        "segmenter_recovering",
        "segmenter_recovery_remaining_messages",
    ):
        assert name in exported


def test_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    used = {m for expr in _dashboard_exprs() for m in METRIC.findall(expr)}
    assert len(used) >= 12
    assert used - exported == set()


def test_alert_rules_use_only_exported_metrics(exported: set[str]) -> None:
    rules = _alert_rules()
    assert {r["alert"] for r in rules} >= {
        "SegmenterLagGrowing",
        "SegmenterDeadLetters",
        "SegmenterOverdueTimers",
        "SegmenterWorkerDown",
        "SegmenterNoLagReported",
    }
    used = {
        m
        for r in rules
        for m in METRIC.findall(r["expr"] + " ".join(r.get("annotations", {}).values()))
    }
    assert used - exported == set()
    lag = next(r for r in rules if r["alert"] == "SegmenterLagGrowing")
    assert lag["for"] == "5m"


def test_compose_mounts_the_ops_files_and_scrapes_the_worker() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    mounted = [
        volume.split(":")[0]
        for name in ("prometheus", "grafana")
        for volume in services[name]["volumes"]
    ]
    for source in mounted:
        assert (ROOT / source).exists(), source
    scrape = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    target = scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
    worker_env = services["worker"]["environment"]
    assert target == f"worker:{worker_env['SEGMENTER_WEB_PORT']}"
    assert worker_env["SEGMENTER_WEB_HOST"] == "0.0.0.0"


def test_a_worker_that_is_gone_is_alerted_on() -> None:
    """The lag, timer and dead-letter alerts read what workers export: a worker that is gone
    exports nothing, so its absence has alerts of its own, on the job Prometheus scrapes."""
    prometheus = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    rules = {r["alert"]: r for r in _alert_rules()}
    down = rules["SegmenterWorkerDown"]["expr"]
    assert down.replace(" ", "") in {f'up{{job="{job}"}}==0' for job in jobs}
    assert rules["SegmenterNoLagReported"]["expr"] == "absent(segmenter_consumer_lag_messages)"
    # any dead letter is reported, not only a sustained rate of them
    assert "increase(segmenter_dead_letters_total" in rules["SegmenterDeadLetters"]["expr"]
    assert rules["SegmenterDeadLetters"]["expr"].rstrip().endswith("> 0")
