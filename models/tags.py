"""Tags beside the segment: purchase preferences and price sensitivity.

Tags have hysteresis so a customer near a threshold does not flap: a tag is added when its
condition is met and removed only when the customer is clearly (``hysteresis``) past it. The
hysteresis runs along the customer's orders in time order, computed from the order records, so
the tags depend on which orders there are, never on the order they arrived in. Orders folded
out of the state's window (``EarlierOrders``) left their tags and running sums behind; the
hysteresis goes on from there.
"""

from __future__ import annotations

import re
from functools import lru_cache

from models.rules import Tags
from models.state import OTHER_CATEGORIES, CustomerState, EarlierOrders, OrderRecord

DISCOUNT_SEEKER = "discount_seeker"
FULL_PRICE_BUYER = "full_price_buyer"


@lru_cache(maxsize=4096)
def preference_tag(category: str) -> str:
    """``prefers_<category>`` with the category folded to lower_snake_case."""
    slug = re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_") or "other"
    return f"prefers_{slug}"


def compute_tags(state: CustomerState, rules: Tags) -> tuple[str, ...]:
    """The customer's tags after their orders so far, sorted."""
    return tags_of(state.earlier, state.counted_orders(), rules)


def tags_of(
    earlier: EarlierOrders | None, counted: list[OrderRecord], rules: Tags
) -> tuple[str, ...]:
    """The tags after the folded orders ``earlier`` and then the orders that count in the
    window (``counted``, oldest first), sorted."""
    tags: set[str] = set()
    spend: dict[str, int] = {}
    count = gross = discount = 0
    if earlier is not None:
        tags.update(earlier.tags)
        spend.update(earlier.categories)
        count, gross, discount = earlier.orders, earlier.gross, earlier.discount
    for record in counted:
        count += 1
        gross += record.total + record.discount
        discount += record.discount
        _add_order(tags, spend, record, count, gross, discount, rules)
    return tuple(sorted(tags))


def tags_after(
    tags: tuple[str, ...],
    spend: dict[str, int],
    record: OrderRecord,
    count: int,
    gross: int,
    discount: int,
    rules: Tags,
) -> tuple[str, ...]:
    """The tags after one more order that counts (the ``count``-th; ``gross`` and
    ``discount`` include it; ``spend`` per category excludes it): what the hysteresis of
    ``compute_tags`` does for that order, for folding orders out of a state's window."""
    after = set(tags)
    _add_order(after, dict(spend), record, count, gross, discount, rules)
    return tuple(sorted(after))


def _add_order(
    tags: set[str],
    spend: dict[str, int],
    record: OrderRecord,
    count: int,
    gross: int,
    discount: int,
    rules: Tags,
) -> None:
    for category, amount in record.categories.items():
        spend[category] = spend.get(category, 0) + amount
    if count >= rules.price_min_orders and gross:
        _price_tags(tags, discount / gross, rules)
    if count >= rules.preference_min_orders and rules.preference_top_n:
        _preference_tags(tags, spend, rules)


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
    # what the caps summed counts in the total, and is no preference
    named = (kv for kv in spend.items() if kv[0] != OTHER_CATEGORIES)
    ranked = sorted(named, key=lambda kv: (-kv[1], kv[0]))
    for rank, (category, amount) in enumerate(ranked):
        share = amount / total
        _toggle(
            tags,
            preference_tag(category),
            add=rank < rules.preference_top_n and share >= rules.preference_min_share,
            remove=rank > rules.preference_top_n
            or share < rules.preference_min_share - rules.hysteresis,
        )
