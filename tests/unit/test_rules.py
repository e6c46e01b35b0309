"""Loading rule files: the default loads, bad files fail with the file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.rules import RulesError, load_rules


def test_default_rules_load() -> None:
    rules = load_rules()
    assert rules.version == "basic-2026.11.1"
    assert rules.inactivity.factor == 3.0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rule file"):
        load_rules(tmp_path / "nope.yaml")


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: x\nbest_customer:\n  min_order: 3\n")
    with pytest.raises(RulesError, match=r"best_customer\.min_order"):
        load_rules(path)


def test_inconsistent_bounds_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: x\ninactivity:\n  floor_days: 100\n  ceiling_days: 10\n")
    with pytest.raises(RulesError, match="floor_days"):
        load_rules(path)


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: [unclosed\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(path)
