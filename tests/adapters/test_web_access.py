"""The worker's HTTP surface: Faust's own views kept off."""

from __future__ import annotations

import pytest

from config.rules import load_rules
from config.settings import Settings
from streams.app import create_app


def test_fausts_table_router_and_statistics_views_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust's own environment variables do not turn them back on.
    monkeypatch.setenv("APP_WEB_TABLES_ENABLED", "true")
    monkeypatch.setenv("APP_WEB_ROUTER_ENABLED", "true")
    conf = create_app(Settings(web_port=0), load_rules(), 2, {}).app.conf
    assert not conf.web_tables_enabled
    assert not conf.web_router_enabled
    assert not conf.web_stats_enabled
    assert not conf.web_graph_enabled
    assert not conf.web_metrics_enabled
