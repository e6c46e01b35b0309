"""The rules check: a first-match-wins map is a small program, and a rule set is refused before
it runs if it has rules that can never match or score combinations that no rule covers.

``check_rules`` also finds the rules no customer reaches under the rule file's own cut-offs: a
single order and a repeat buyer score F within ranges the cut-offs set (a rule for a repeat
buyer with f=1 is dead where two orders always score f=2 or more). In ``fixed`` mode those rules
can never match, and the rule set is refused; in ``quantile`` mode a calibration may reach them,
and the check says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from models.rules import Cell, Condition, SegmentRules
from models.scoring import scaled_cutoffs, score_higher_is_better


@dataclass(frozen=True)
class RuleReport:
    """What ``check_rules`` found; ``ok``: the rule set may run."""

    unreachable: tuple[str, ...]
    uncovered: tuple[Cell, ...]
    # Reachable, but by no customer under the rule file's cut-offs (see ``frequency_scores``).
    unreached: tuple[str, ...] = ()
    # Whether those cut-offs are the only ones (``fixed`` mode): the unreached rules are dead.
    fixed: bool = False
    # The F scores of a single order and of a repeat buyer under those cut-offs.
    single_f: tuple[int, ...] = ()
    repeat_f: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.unreachable and not self.uncovered and not (self.fixed and self.unreached)

    def unreached_note(self) -> str:
        """Which rules no customer reaches under the rule file's cut-offs, and why."""
        if not self.unreached:
            return ""
        where = (
            "under the rule file's fixed cut-offs"
            if self.fixed
            else "under the rule file's cut-offs (a shop's until its first calibration)"
        )
        return (
            f"no customer reaches {', '.join(self.unreached)} {where}: a single order scores "
            f"f={_span(self.single_f)} there and more orders f={_span(self.repeat_f)}"
        )

    def describe(self) -> str:
        lines = []
        if self.unreachable:
            lines.append(
                "unreachable rules (earlier rules always match first): "
                + ", ".join(self.unreachable)
            )
        if self.fixed and self.unreached:
            lines.append(self.unreached_note())
        if self.uncovered:
            shown = "; ".join(c.describe() for c in self.uncovered[:12])
            more = len(self.uncovered) - 12
            lines.append(
                f"{len(self.uncovered)} combinations no rule covers: {shown}"
                + (f" (+{more} more)" if more > 0 else "")
            )
        return "\n".join(lines) or "ok"


def all_cells() -> list[Cell]:
    return [
        Cell(inactive, single, r, f, m)
        for inactive, single in itertools.product((False, True), repeat=2)
        for r, f, m in itertools.product(range(1, 6), repeat=3)
    ]


def _span(scores: tuple[int, ...]) -> str:
    low, high = min(scores), max(scores)
    return str(low) if low == high else f"{low}-{high}"


def frequency_scores(
    cuts: tuple[float, ...], margin: float
) -> tuple[frozenset[int], frozenset[int]]:
    """The F scores a customer can have with a single order, and with two orders or more,
    under these frequency cut-offs and hysteresis margin. With n orders the score lies between
    the one the raised cut-offs give and the one the lowered ones give (a score moves only when
    the value is past a boundary by the margin, so it can stay anywhere in between); more
    orders than the highest cut-off (raised) score 5."""
    raised = scaled_cutoffs(cuts, 1 + margin)
    lowered = scaled_cutoffs(cuts, 1 - margin)

    def scores(orders: int) -> set[int]:
        low = score_higher_is_better(orders, raised)
        high = score_higher_is_better(orders, lowered)
        return set(range(low, high + 1))

    repeat: set[int] = set()
    for orders in range(2, int(max(raised, default=0)) + 3):
        repeat |= scores(orders)
    return frozenset(scores(1)), frozenset(repeat)


def _walk(rules: SegmentRules, cells: list[Cell], skip: set[str]) -> tuple[set[str], list[Cell]]:
    """The rules some of ``cells`` reach, and the cells no rule covers."""
    reachable: set[str] = set()
    uncovered: list[Cell] = []
    for cell in cells:
        covered = False
        for segment in rules.segments:
            if segment.name in skip or not segment.when.matches_cell(cell):
                continue
            reachable.add(segment.name)
            if not segment.when.partial:
                covered = True
                break
        if not covered:
            uncovered.append(cell)
    return reachable, uncovered


def check_rules(rules: SegmentRules) -> RuleReport:
    """Unreachable rules and uncovered combinations of the first-match-wins map, and the rules
    no customer reaches under the rule file's cut-offs (see the module's docstring).

    A partial rule that repeats the condition of an earlier rule exactly can never match either.
    """
    seen: set[Condition] = set()
    repeats = set()
    for segment in rules.segments:
        if segment.when in seen:
            repeats.add(segment.name)
        seen.add(segment.when)
    reachable, uncovered = _walk(rules, all_cells(), repeats)
    unreachable = tuple(s.name for s in rules.segments if s.name not in reachable)
    scoring = rules.scoring
    single, repeat = frequency_scores(scoring.cutoffs.frequency, scoring.hysteresis_margin)
    occurring = [c for c in all_cells() if c.f in (single if c.single_order else repeat)]
    reached, _ = _walk(rules, occurring, repeats)
    unreached = tuple(s for s in rules.segments if s.name in reachable and s.name not in reached)
    return RuleReport(
        unreachable=unreachable,
        uncovered=tuple(uncovered),
        unreached=tuple(s.name for s in unreached),
        fixed=scoring.mode == "fixed",
        single_f=tuple(sorted(single)),
        repeat_f=tuple(sorted(repeat)),
    )
