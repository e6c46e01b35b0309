"""Tags beside the segment: purchase preferences and price sensitivity."""

from __future__ import annotations

import re

from models.events import Metrics
from models.rules import Tags
from models.state import CustomerState

DISCOUNT_SEEKER = "discount_seeker"
FULL_PRICE_BUYER = "full_price_buyer"


def preference_tag(category: str) -> str:
    """``prefers_<category>`` with the category folded to lower_snake_case."""
    slug = re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_") or "other"
    return f"prefers_{slug}"


def compute_tags(state: CustomerState, metrics: Metrics, rules: Tags) -> tuple[str, ...]:
    """The customer's tags, sorted."""
    tags: set[str] = set()
    if metrics.order_count >= rules.price_min_orders:
        if metrics.discount_share >= rules.discount_seeker_min_share:
            tags.add(DISCOUNT_SEEKER)
        elif metrics.discount_share <= rules.full_price_max_share:
            tags.add(FULL_PRICE_BUYER)
    if metrics.order_count >= rules.preference_min_orders and rules.preference_top_n:
        spend = state.category_spend()
        total = sum(spend.values())
        if total > 0:
            top = list(spend.items())[: rules.preference_top_n]
            tags.update(
                preference_tag(category)
                for category, amount in top
                if amount / total >= rules.preference_min_share
            )
    return tuple(sorted(tags))
