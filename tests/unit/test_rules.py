"""Loading rule files: the default loads, bad files fail with the file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.rules import DEFAULT_RULES_FILE, RulesError, load_rules
from models.rules import check_rules

DEFAULT = DEFAULT_RULES_FILE.read_text()


def test_default_rules_load() -> None:
    rules = load_rules()
    assert rules.version == "rfm-2026.11.1"
    assert rules.inactivity.factor == 3.0
    assert rules.segment_names[:3] == ("inactive", "new", "best_customer")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rule file"):
        load_rules(tmp_path / "nope.yaml")


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT.replace("  hysteresis_margin:", "  hysteresis_margn:"))
    with pytest.raises(RulesError, match=r"scoring\.hysteresis_margn"):
        load_rules(path)


def test_inconsistent_bounds_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT.replace("floor_days: 14", "floor_days: 400"))
    with pytest.raises(RulesError, match="floor_days"):
        load_rules(path)


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: [unclosed\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(path)


def test_a_rule_shadowed_by_earlier_rules_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    shadowed = "  - name: loyal_again\n    when: {r: [4, 5], f: [4, 5]}\n"
    path.write_text(DEFAULT + shadowed)
    with pytest.raises(RulesError, match=r"unreachable rules .*: loyal_again"):
        load_rules(path)


def test_a_gap_in_the_map_names_the_uncovered_combinations(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    gap = DEFAULT.replace("    when: {r: [1, 1], f: [1, 2]}", "    when: {r: [1, 1], f: [1, 1]}")
    path.write_text(gap)
    report = check_rules(load_rules(path, check=False))
    assert report.unreachable == ()
    assert [c.describe() for c in report.uncovered] == [
        f"r=1 f=2 m={m} (active, repeat buyer)" for m in range(1, 6)
    ]
    with pytest.raises(RulesError, match="5 combinations no rule covers: r=1 f=2 m=1"):
        load_rules(path)


def test_partial_rules_do_not_count_as_covering(tmp_path: Path) -> None:
    # Without champions, best_customer (full price only) leaves r>=4 f>=4 m>=4 discount users
    # to `loyal`; drop loyal too and those cells are uncovered.
    path = tmp_path / "rules.yaml"
    text = DEFAULT
    for name in ("champions", "loyal"):
        start = text.index(f"  - name: {name}\n")
        end = text.index("  - name:", start + 5)
        text = text[:start] + text[end:]
    path.write_text(text)
    report = check_rules(load_rules(path, check=False))
    assert report.uncovered
    assert all(c.f >= 4 and c.r >= 3 for c in report.uncovered)


def test_duplicate_segment_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT + "  - name: lost\n    when: {}\n")
    with pytest.raises(RulesError, match="repeated: \\['lost'\\]"):
        load_rules(path)
