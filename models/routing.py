"""Where transitions go: which transition names have a marketing topic of their own, and which
transitions are sent to it.

Every transition goes to the transitions topic; these decide the marketing topics only.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from models.events import transition_name, transition_names
from models.rules import SegmentRules


def marketing_transitions(rules: SegmentRules) -> list[str]:
    """Transition names with a marketing topic of their own (segments may opt out)."""
    quiet = {transition_name(s.name) for s in rules.segments if not s.marketing}
    return [name for name in transition_names(rules.segment_names) if name not in quiet]


@dataclass(frozen=True)
class Routing:
    """The marketing settings of a worker.

    ``marketing``: the transition names that have a marketing topic; ``backfill``: the worker
    is replaying history; ``skip_backfill``: backfilled transitions are kept off the marketing
    topics; ``skip_causes``: transitions of these cause kinds are kept off them."""

    marketing: Set[str]
    backfill: bool = False
    skip_backfill: bool = False
    skip_causes: frozenset[str] = frozenset()

    def to_marketing(self, transition: str, cause_kind: str, *, force: bool = False) -> bool:
        """Whether a transition named ``transition`` caused by ``cause_kind`` goes to the
        marketing topic of its name: if that topic exists, unless it is a backfill and
        backfills are kept off, or its cause kind is kept off.

        ``force`` (an erasure, which must reach downstream): whatever the backfill setting; a
        cause kind kept off is still kept off."""
        if transition not in self.marketing or cause_kind in self.skip_causes:
            return False
        return force or not (self.backfill and self.skip_backfill)
