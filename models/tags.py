"""Tags beside the segment: purchase preferences and price sensitivity.

Tags have hysteresis so a customer near a threshold does not flap: a tag is added when its
condition is met and removed only when the customer is clearly (``hysteresis``) past it. The
hysteresis runs along the customer's orders in time order, computed from the order records, so
the tags depend on which orders there are, never on the order they arrived in.
"""

from __future__ import annotations

import re
from functools import lru_cache

from models.rules import Tags
from models.state import CustomerState

DISCOUNT_SEEKER = "discount_seeker"
FULL_PRICE_BUYER = "full_price_buyer"


@lru_cache(maxsize=4096)
def preference_tag(category: str) -> str:
    """``prefers_<category>`` with the category folded to lower_snake_case."""
    slug = re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_") or "other"
    return f"prefers_{slug}"


def compute_tags(state: CustomerState, rules: Tags) -> tuple[str, ...]:
    """The customer's tags after their orders so far, sorted."""
    tags: set[str] = set()
    spend: dict[str, int] = {}
    gross = discount = 0
    for count, record in enumerate(state.counted_orders(), start=1):
        gross += record.total + record.discount
        discount += record.discount
        for category, amount in record.categories.items():
            spend[category] = spend.get(category, 0) + amount
        if count >= rules.price_min_orders and gross:
            _price_tags(tags, discount / gross, rules)
        if count >= rules.preference_min_orders and rules.preference_top_n:
            _preference_tags(tags, spend, rules)
    return tuple(sorted(tags))


def _toggle(tags: set[str], tag: str, add: bool, remove: bool) -> None:
    if add:
        tags.add(tag)
    elif remove:
        tags.discard(tag)


def _price_tags(tags: set[str], share: float, rules: Tags) -> None:
    margin = rules.hysteresis
    _toggle(
        tags,
        DISCOUNT_SEEKER,
        add=share >= rules.discount_seeker_min_share,
        remove=share < rules.discount_seeker_min_share - margin,
    )
    _toggle(
        tags,
        FULL_PRICE_BUYER,
        add=share <= rules.full_price_max_share,
        remove=share > rules.full_price_max_share + margin,
    )


def _preference_tags(tags: set[str], spend: dict[str, int], rules: Tags) -> None:
    total = sum(spend.values())
    if total <= 0:
        return
    ranked = sorted(spend.items(), key=lambda kv: (-kv[1], kv[0]))
    for rank, (category, amount) in enumerate(ranked):
        share = amount / total
        _toggle(
            tags,
            preference_tag(category),
            add=rank < rules.preference_top_n and share >= rules.preference_min_share,
            remove=rank > rules.preference_top_n
            or share < rules.preference_min_share - rules.hysteresis,
        )
