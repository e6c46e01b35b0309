"""The segment rule set: thresholds, the order in which segments are tried, and the decision.

A rule set is configuration (``config/segments.yaml``) validated into these frozen models.
``decide`` is the one place that maps a customer's metrics to a segment; swapping the rule
model means swapping this module, nothing in the adapters.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.events import Metrics

INACTIVE: Final = "inactive"
BEST_CUSTOMER: Final = "best_customer"
LOW_AOV: Final = "low_average_order_value"
NEW: Final = "new"
RETURNING: Final = "returning"
# First match wins; every customer with at least one order matches one of them.
SEGMENTS: Final = (INACTIVE, LOW_AOV, BEST_CUSTOMER, NEW, RETURNING)

PositiveDays = Annotated[float, Field(gt=0, le=3650)]


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InactivityRule(_Rule):
    """Inactive once the time since the last order exceeds ``factor`` times the customer's own
    typical gap between orders, bounded by ``floor_days`` and ``ceiling_days``. Customers with a
    single order have no rhythm yet and use ``single_order_days``."""

    factor: Annotated[float, Field(gt=1, le=50)] = 3.0
    floor_days: PositiveDays = 14
    ceiling_days: PositiveDays = 365
    single_order_days: PositiveDays = 90

    @model_validator(mode="after")
    def _bounds_ordered(self) -> InactivityRule:
        if self.floor_days > self.ceiling_days:
            raise ValueError(
                f"floor_days ({self.floor_days}) must not exceed ceiling_days ({self.ceiling_days})"
            )
        return self

    def threshold_days(self, order_count: int, typical_gap_days: float | None) -> float | None:
        """Days after the last order at which the customer becomes inactive (None: no orders)."""
        if order_count == 0:
            return None
        if typical_gap_days is None:
            return self.single_order_days
        return min(max(self.factor * typical_gap_days, self.floor_days), self.ceiling_days)


class BestCustomerRule(_Rule):
    """Comes back often, spends a lot in total, and pays (nearly) full price."""

    min_orders: Annotated[int, Field(ge=2)] = 4
    min_total_spend: Annotated[int, Field(ge=0)] = 40_000
    max_discount_share: Annotated[float, Field(ge=0, le=1)] = 0.10


class LowAverageOrderValueRule(_Rule):
    """Loyal and frequent, but with small baskets."""

    min_orders: Annotated[int, Field(ge=2)] = 3
    max_average_order_value: Annotated[int, Field(ge=0)] = 2_500


class SegmentRules(_Rule):
    """A versioned rule set; the version travels on every transition it causes."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    inactivity: InactivityRule = InactivityRule()
    best_customer: BestCustomerRule = BestCustomerRule()
    low_average_order_value: LowAverageOrderValueRule = LowAverageOrderValueRule()


def decide(m: Metrics, rules: SegmentRules) -> str | None:
    """The segment for these metrics; None for a customer with no (remaining) orders."""
    if m.order_count == 0:
        return None
    if (
        m.days_since_last_order is not None
        and m.inactive_after_days is not None
        and m.days_since_last_order >= m.inactive_after_days
    ):
        return INACTIVE
    low = rules.low_average_order_value
    if m.order_count >= low.min_orders and m.average_order_value <= low.max_average_order_value:
        return LOW_AOV
    best = rules.best_customer
    if (
        m.order_count >= best.min_orders
        and m.total_spend >= best.min_total_spend
        and m.discount_share <= best.max_discount_share
    ):
        return BEST_CUSTOMER
    return NEW if m.order_count == 1 else RETURNING
