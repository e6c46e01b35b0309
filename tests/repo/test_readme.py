"""The README documents what the code does: schema, settings and commands, and the latest
benchmark results as bench/results.json holds them."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from click.testing import CliRunner

from config.settings import Settings
from models.events import order_event_json_schema
from streams.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_first_two_commands_are_demo_and_test() -> None:
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]


def test_published_schema_is_the_generated_one() -> None:
    block = README.split("<summary>orders topic JSON Schema</summary>")[1]
    json_text = block.split("```json")[1].split("```")[0]
    assert orjson.loads(json_text) == order_event_json_schema()


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`SEGMENTER_{name.upper()}`" in README, name


def test_every_command_is_documented() -> None:
    for name in main.commands:
        assert f"`segmenter {name}" in README, name


def test_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert orjson.loads(result.output) == order_event_json_schema()


def test_the_performance_table_quotes_the_latest_results() -> None:
    figures = orjson.loads((ROOT / "bench" / "results.json").read_bytes())["figures"]
    run, latency = figures["throughput"], figures["latency"]
    scaling, restart = figures["scaling"], figures["restart"]
    baseline = sum(run["raw_orders_per_s"]) / len(run["raw_orders_per_s"])
    rows = [
        f"({run['worker_orders_per_s']:,} vs ~{round(baseline, -2):,.0f} orders/s) | "
        f"{_percent(run['ratio'])} |",
        f"({run['floor_orders_per_s']:,} orders/s) / raw baseline | "
        f"{_percent(run['floor_ratio'])} |",
        f"({run['core_orders_per_s']:,} orders/s) / raw baseline | {_percent(run['core_ratio'])} |",
        f"({scaling['orders_per_s']:,} orders/s) / one worker | {scaling['speedup']:.2f} x |",
        f"| {latency['p50_ms']} / {latency['p99_ms']} / {latency['max_ms']} ms |",
        f"to ready | {restart['warm_restart_s']} s |",
        # and the known limits
        f"- Throughput: about {_percent(run['ratio'])} of a raw aiokafka consumer",
        f"(two workers on the same 2 cores: {scaling['speedup']:.2f} times one)",
    ]
    for row in rows:
        assert row in README, row


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f} %"
