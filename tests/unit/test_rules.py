"""Loading rule files: the default loads, bad files fail with the file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.rules import DEFAULT_RULES_FILE, RulesError, load_rules
from models.rule_check import check_rules, frequency_scores
from models.scoring import Cutoffs, compute_scores

DEFAULT = DEFAULT_RULES_FILE.read_text()


def test_default_rules_load() -> None:
    rules = load_rules()
    assert rules.version == "rfm-2026.12.1"
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


def test_rules_no_customer_reaches_under_the_rule_files_cut_offs_are_named() -> None:
    """Under the shipped cut-offs a second order always scores f=2 or more, and a single order
    is `new` (or inactive) first: promising and about_to_sleep (f=1, repeat buyers) wait for a
    calibration that gives a repeat buyer f=1. In quantile mode that is a note, not a refusal."""
    report = check_rules(load_rules())
    assert report.unreached == ("promising", "about_to_sleep")
    assert (report.single_f, report.repeat_f) == ((1, 2), (2, 3, 4, 5))
    assert report.ok
    assert report.unreached_note() == (
        "no customer reaches promising, about_to_sleep under the rule file's cut-offs (a shop's "
        "until its first calibration): a single order scores f=1-2 there and more orders f=2-5"
    )


def test_in_fixed_mode_rules_no_customer_reaches_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT.replace("  mode: quantile", "  mode: fixed"))
    with pytest.raises(RulesError, match="no customer reaches promising, about_to_sleep under"):
        load_rules(path)
    # cut-offs under which a second order can still score f=1 reach them
    path.write_text(
        DEFAULT.replace("  mode: quantile", "  mode: fixed").replace(
            "    frequency: [1, 2, 3, 5]", "    frequency: [2, 3, 4, 6]"
        )
    )
    report = check_rules(load_rules(path))
    assert report.unreached == ()
    assert report.repeat_f[0] == 1


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 12), min_size=4, max_size=4).map(sorted),
    margin=st.sampled_from([0.0, 0.05, 0.2, 0.5]),
    orders=st.lists(st.integers(1, 20), min_size=1, max_size=12),
)
def test_frequency_scores_hold_every_score_a_customer_can_have(
    cuts: list[int], margin: float, orders: list[int]
) -> None:
    """Whatever a customer's count of orders went through (orders, cancellations), the F
    score compute_scores gives them lies in the set for a single order or for more."""
    cutoffs = Cutoffs(recency_days=(10, 20, 30, 40), frequency=tuple(cuts), monetary=(1, 2, 3, 4))
    single, repeat = frequency_scores(cutoffs.frequency, margin)
    previous = None
    for count in orders:
        previous = compute_scores(5.0, count, 100, cutoffs, previous, margin)
        assert previous.f in (single if count == 1 else repeat), (count, previous)
