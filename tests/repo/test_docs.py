"""The README and the pages of docs/ document what the code does: schema, settings and commands,
and the latest benchmark results as bench/results.json holds them."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from click.testing import CliRunner

from config.settings import Settings
from models.events import order_event_json_schema
from streams.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
SCHEMA_FILE = DOCS / "order-event.schema.json"
REGENERATE = "segmenter schema > docs/order-event.schema.json"


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def test_the_first_two_commands_are_demo_and_test() -> None:
    commands = re.findall(r"^make (\w+)", README, flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]


def test_the_readme_stays_short_and_links_every_page() -> None:
    assert len(README.splitlines()) < 200
    pages = {p.name for p in DOCS.iterdir()}
    linked = set(re.findall(r"\]\(docs/([^)#]+)", README))
    assert pages <= linked, pages - linked


def test_every_relative_link_in_the_docs_resolves() -> None:
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def test_the_published_schema_file_is_what_segmenter_schema_prints() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert SCHEMA_FILE.read_text() == result.output, f"regenerate it: {REGENERATE}"
    assert REGENERATE in doc("events.md")


def test_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    assert orjson.loads(result.output) == order_event_json_schema()


def test_every_setting_is_documented() -> None:
    configuration = doc("configuration.md")
    for name in Settings.model_fields:
        assert f"| `SEGMENTER_{name.upper()}` |" in configuration, name


def test_every_command_is_documented() -> None:
    operations = doc("operations.md")
    for name in main.commands:
        assert f"| `segmenter {name}" in operations, name


def test_the_performance_table_quotes_the_latest_results() -> None:
    figures = orjson.loads((ROOT / "bench" / "results.json").read_bytes())["figures"]
    run, latency = figures["throughput"], figures["latency"]
    scaling, restart = figures["scaling"], figures["restart"]
    baseline = sum(run["raw_orders_per_s"]) / len(run["raw_orders_per_s"])
    performance = [
        f"({run['worker_orders_per_s']:,} vs ~{round(baseline, -2):,.0f} orders/s) | "
        f"{_percent(run['ratio'])} |",
        f"({run['floor_orders_per_s']:,} orders/s) / raw baseline | "
        f"{_percent(run['floor_ratio'])} |",
        f"({run['core_orders_per_s']:,} orders/s) / raw baseline | {_percent(run['core_ratio'])} |",
        f"({scaling['orders_per_s']:,} orders/s) / one worker | {scaling['speedup']:.2f} x |",
        f"| {latency['p50_ms']} / {latency['p99_ms']} / {latency['max_ms']} ms |",
        f"to ready | {restart['warm_restart_s']} s |",
    ]
    for row in performance:
        assert row in doc("performance.md"), row
    known_limits = [
        f"- Throughput: about {_percent(run['ratio'])} of a raw aiokafka consumer",
        f"(two workers on the same 2 cores: {scaling['speedup']:.2f} times one)",
    ]
    for row in known_limits:
        assert row in doc("known-limits.md"), row


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f} %"


def test_where_things_are_names_modules_that_exist_and_covers_every_package() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`((?:models|streams|config|tests|bench)/[\w/.]*)`", section)
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []
    named = {p.rstrip("/") for p in paths}
    modules = [
        p.relative_to(ROOT).as_posix()
        for package in ("models", "config", "streams")
        for p in (ROOT / package).glob("*.py")
        if p.name != "__init__.py"
    ]
    assert [m for m in modules if m not in named] == []  # every module has a line
