"""Loading and validating a segment rule file, with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import yaml
from pydantic import ValidationError

from models.rule_check import RuleReport, check_rules
from models.rules import SegmentRules

DEFAULT_RULES_FILE: Final = Path(__file__).with_name("segments.yaml")


class RulesError(ValueError):
    """A rule file that cannot be used; the message says where and why."""


def load_rules(path: Path | None = None, *, check: bool = True) -> SegmentRules:
    """Read and validate a rule file (YAML); the default is the bundled ``segments.yaml``.

    With ``check`` (the default) a map with unreachable rules or uncovered score combinations
    is refused, naming them (``load_checked_rules``).
    """
    if check:
        return load_checked_rules(path)[0]
    path = path or DEFAULT_RULES_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rule file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RulesError(f"{path}: expected a mapping at the top level")
    try:
        rules = SegmentRules.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise RulesError(f"{path}: invalid rule set: {problems}") from exc
    return rules


def load_checked_rules(path: Path | None = None) -> tuple[SegmentRules, RuleReport]:
    """``load_rules`` with the check, and the check's report (its notes, for the log)."""
    path = path or DEFAULT_RULES_FILE
    rules = load_rules(path, check=False)
    report = check_rules(rules)
    if not report.ok:
        raise RulesError(f"{path}: rule set {rules.version} fails the check:\n{report.describe()}")
    return rules, report
