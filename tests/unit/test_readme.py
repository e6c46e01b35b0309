"""The README documents what the code does: schema, settings and commands."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from click.testing import CliRunner

from config.settings import Settings
from models.events import order_event_json_schema
from streams.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


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
