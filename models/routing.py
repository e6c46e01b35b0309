"""Which topics a transition goes to."""

from __future__ import annotations

from models.events import transition_name, transition_names
from models.rules import SegmentRules


def marketing_transitions(rules: SegmentRules) -> list[str]:
    """Transition names with a marketing topic of their own (segments may opt out)."""
    quiet = {transition_name(s.name) for s in rules.segments if not s.marketing}
    return [name for name in transition_names(rules.segment_names) if name not in quiet]
