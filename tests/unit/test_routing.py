"""Where transitions go: the marketing topics and which transitions reach them."""

from __future__ import annotations

import itertools

import pytest

from config.settings import Settings
from models.routing import Routing, marketing_transitions
from tests.unit.core import RULES

BECAME_NEW = "customer.became_new"
LEFT = "customer.left_all_segments"
TAG_ADDED = "customer.tag_added"


def test_every_transition_name_of_the_rule_set_has_a_marketing_topic_by_default() -> None:
    segments = [
        "inactive",
        "new",
        "best_customer",
        "low_average_order_value",
        "champions",
        "loyal",
        "potential_loyalist",
        "promising",
        "needs_attention",
        "about_to_sleep",
        "cant_lose_them",
        "at_risk",
        "hibernating",
        "lost",
    ]
    assert marketing_transitions(RULES) == [
        *(f"customer.became_{s}" for s in segments),
        LEFT,
        TAG_ADDED,
        "customer.tag_removed",
        "customer.became_likely_churned",
        "customer.no_longer_likely_churned",
    ]


def test_churn_risk_moves_reach_marketing_unless_a_refit_caused_them() -> None:
    """The default settings keep ``model_refit`` off the marketing topics, like rule changes:
    a refit re-judges every customer at once, which is not something the customer did."""
    routing = Routing(
        frozenset(marketing_transitions(RULES)),
        skip_causes=frozenset(Settings.model_fields["marketing_skip_causes"].default),
    )
    became = "customer.became_likely_churned"
    assert routing.to_marketing(became, "time")
    assert routing.to_marketing("customer.no_longer_likely_churned", "order_placed")
    assert not routing.to_marketing(became, "model_refit")


def test_a_segment_that_opts_out_has_no_marketing_topic() -> None:
    quiet = tuple(
        s.model_copy(update={"marketing": False}) if s.name in ("new", "lost") else s
        for s in RULES.segments
    )
    names = marketing_transitions(RULES.model_copy(update={"segments": quiet}))
    assert BECAME_NEW not in names and "customer.became_lost" not in names
    assert len(names) == len(marketing_transitions(RULES)) - 2
    assert "customer.became_champions" in names and LEFT in names


MARKETING = frozenset({BECAME_NEW, TAG_ADDED})


@pytest.mark.parametrize(
    ("transition", "cause", "backfill", "skip_backfill", "skip_causes", "force", "expected"),
    [
        # a topic of its own: sent
        (BECAME_NEW, "order_placed", False, False, frozenset(), False, True),
        # no marketing topic: never, not even forced
        (LEFT, "order_placed", False, False, frozenset(), False, False),
        (LEFT, "erasure", False, False, frozenset(), True, False),
        # a backfill is sent unless backfills are kept off
        (BECAME_NEW, "order_placed", True, False, frozenset(), False, True),
        (BECAME_NEW, "order_placed", True, True, frozenset(), False, False),
        # kept off only while backfilling
        (BECAME_NEW, "order_placed", False, True, frozenset(), False, True),
        # forced (erasure): whatever the backfill setting
        (BECAME_NEW, "erasure", True, True, frozenset(), True, True),
        # a cause kind kept off
        (TAG_ADDED, "time", False, False, frozenset({"time"}), False, False),
        (TAG_ADDED, "order_placed", False, False, frozenset({"time"}), False, True),
        # ... stays off even when forced
        (BECAME_NEW, "erasure", True, True, frozenset({"erasure"}), True, False),
        (BECAME_NEW, "erasure", False, False, frozenset({"erasure"}), True, False),
    ],
)
def test_which_transitions_go_to_marketing(
    transition: str,
    cause: str,
    backfill: bool,
    skip_backfill: bool,
    skip_causes: frozenset[str],
    force: bool,
    expected: bool,
) -> None:
    routing = Routing(MARKETING, backfill, skip_backfill, skip_causes)
    assert routing.to_marketing(transition, cause, force=force) is expected


def test_the_routing_is_the_publishers_rule_in_every_combination() -> None:
    marketing = {BECAME_NEW: object()}  # name -> topic, as the publisher holds them
    for transition, cause, backfill, skip_backfill, skip, force in itertools.product(
        (BECAME_NEW, LEFT),
        ("order_placed", "time", "erasure"),
        (False, True),
        (False, True),
        (frozenset(), frozenset({"time"}), frozenset({"erasure", "time"})),
        (False, True),
    ):
        # the publisher's own expressions, as the oracle
        to_marketing = force or not (backfill and skip_backfill)
        oracle = marketing.get(transition) is not None and to_marketing and cause not in skip
        routing = Routing(frozenset(marketing), backfill, skip_backfill, skip)
        assert routing.to_marketing(transition, cause, force=force) is oracle
