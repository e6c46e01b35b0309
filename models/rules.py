"""The segment rule set: scoring settings, personal inactivity, tags and the ordered segment map,
and the decision it makes.

A rule set is configuration (``config/segments.yaml``) validated into these frozen models. The
map is evaluated first-match-wins (``decide``), compiled per rule set and score cell. Whether a
map is sound (no dead rules, no uncovered scores) is ``models.rule_check``'s question.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Final, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.memo import IdentityMemo
from models.scoring import Cutoffs

INACTIVE: Final = "inactive"
Probability = Annotated[float, Field(gt=0, lt=1)]
PositiveDays = Annotated[float, Field(gt=0, le=3650)]
Score = Annotated[int, Field(ge=1, le=5)]
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InactivityRule(_Rule):
    """Inactive once the time since the last order exceeds ``factor`` times the customer's own
    typical gap between orders, bounded by ``floor_days`` and ``ceiling_days``. Gaps shorter
    than ``min_gap_days`` do not count (orders that close together are one visit). Customers
    with a single order, or with no gap that long, have no rhythm yet and use
    ``single_order_days``."""

    factor: Annotated[float, Field(gt=1, le=50)] = 3.0
    floor_days: PositiveDays = 14
    ceiling_days: PositiveDays = 365
    single_order_days: PositiveDays = 90
    min_gap_days: Annotated[float, Field(ge=0, le=30)] = 1

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


class Scoring(_Rule):
    """How R, F and M scores are computed, and how sticky they are."""

    mode: Literal["quantile", "fixed"] = "quantile"
    # Fixed mode: these cut-offs for every shop. Quantile mode: used until a shop's first
    # calibration (version ``bootstrap``).
    cutoffs: Cutoffs
    hysteresis_margin: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    # Quantiles of fewer customers say little: such shops keep the rule file's cut-offs.
    min_customers: Annotated[int, Field(ge=1)] = 20
    # Segment changes caused by time or recalibration wait until the customer has been in the
    # current segment this long; a customer's own orders always count at once.
    min_dwell_days: Annotated[float, Field(ge=0, le=365)] = 7


class Tags(_Rule):
    """Tags beside the segment: purchase preferences and price sensitivity."""

    preference_top_n: Annotated[int, Field(ge=0, le=10)] = 2
    preference_min_share: Annotated[float, Field(gt=0, le=1)] = 0.25
    preference_min_orders: Annotated[int, Field(ge=1)] = 2
    discount_seeker_min_share: Annotated[float, Field(gt=0, le=1)] = 0.20
    full_price_max_share: Annotated[float, Field(ge=0, le=1)] = 0.05
    price_min_orders: Annotated[int, Field(ge=1)] = 2
    # A tag is removed only when the customer is this far (share points) past its threshold.
    hysteresis: Annotated[float, Field(ge=0, le=0.5)] = 0.05

    @model_validator(mode="after")
    def _separated(self) -> Tags:
        if self.full_price_max_share >= self.discount_seeker_min_share:
            raise ValueError("full_price_max_share must be below discount_seeker_min_share")
        return self


class Condition(_Rule):
    """What a customer must satisfy for a segment; omitted parts match anything.

    ``r``, ``f``, ``m`` are inclusive score ranges; ``inactive`` and ``single_order`` are the two
    flags. The money and share bounds are *partial*: the checker cannot know which customers of
    a score cell they match, so it never counts them as covering the cell.

    The prediction bounds (partial too) ask the shop's prediction model (``models.predictive``):
    ``max_p_alive``, P(alive) at or below it; ``min_p_alive``, P(alive) above it;
    ``clv_top_share``, predicted CLV within the shop's top share (at or above the CLV the
    share's best customers reached when the model was fitted). A customer whose shop has no
    model matches none of them.
    """

    r: tuple[Score, Score] | None = None
    f: tuple[Score, Score] | None = None
    m: tuple[Score, Score] | None = None
    inactive: bool | None = None
    single_order: bool | None = None
    max_discount_share: Annotated[float, Field(ge=0, le=1)] | None = None
    min_discount_share: Annotated[float, Field(ge=0, le=1)] | None = None
    max_average_order_value: Annotated[int, Field(ge=0)] | None = None
    min_average_order_value: Annotated[int, Field(ge=0)] | None = None
    max_p_alive: Probability | None = None
    min_p_alive: Probability | None = None
    clv_top_share: Probability | None = None

    @field_validator("r", "f", "m")
    @classmethod
    def _range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"score range {list(value)} is empty (low above high)")
        return value

    @model_validator(mode="after")
    def _bounds_consistent(self) -> Condition:
        for low, high, what in (
            (self.min_discount_share, self.max_discount_share, "discount_share"),
            (self.min_average_order_value, self.max_average_order_value, "average_order_value"),
        ):
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what} ({low}) is above max_{what} ({high}): never matches")
        if (
            self.min_p_alive is not None
            and self.max_p_alive is not None
            and self.min_p_alive >= self.max_p_alive
        ):
            raise ValueError(
                f"min_p_alive ({self.min_p_alive}) is not below max_p_alive "
                f"({self.max_p_alive}): never matches"
            )
        share = self.clv_top_share
        if share is not None and abs(share * 100 - round(share * 100)) > 1e-9:
            raise ValueError(
                f"clv_top_share ({share}) must be a whole percentage (0.01 to 0.99): the "
                "prediction model keeps the CLV of every percentile"
            )
        return self

    @property
    def partial(self) -> bool:
        return self.predictive or any(
            v is not None
            for v in (
                self.max_discount_share,
                self.min_discount_share,
                self.max_average_order_value,
                self.min_average_order_value,
            )
        )

    @property
    def predictive(self) -> bool:
        """Whether the condition asks the shop's prediction model."""
        return any(v is not None for v in (self.max_p_alive, self.min_p_alive, self.clv_top_share))

    def matches_cell(self, cell: Cell) -> bool:
        """Whether the flag and score parts match (the partial bounds are not looked at)."""
        return (
            _in(self.r, cell.r)
            and _in(self.f, cell.f)
            and _in(self.m, cell.m)
            and (self.inactive is None or self.inactive == cell.inactive)
            and (self.single_order is None or self.single_order == cell.single_order)
        )

    def matches(self, facts: SegmentFacts) -> bool:
        return self.matches_cell(facts.cell) and self.matches_partial(facts)

    def matches_partial(self, facts: SegmentFacts) -> bool:
        """Whether the partial bounds (money and share, predictions) match."""
        return self.matches_bounds(facts.discount_share, facts.average_order_value) and (
            not self.predictive or self.matches_predictions(facts.predictions)
        )

    def matches_predictions(self, view: PredictionView | None) -> bool:
        """Whether the prediction bounds match (none does without a prediction model)."""
        if view is None:
            return not self.predictive
        if self.max_p_alive is not None and view.p_alive_at_most(self.max_p_alive) is not True:
            return False
        if self.min_p_alive is not None and view.p_alive_at_most(self.min_p_alive) is not False:
            return False
        return self.clv_top_share is None or view.clv_in_top(self.clv_top_share) is True

    def matches_bounds(self, discount_share: float, average_order_value: int) -> bool:
        """Whether the partial (money and share) bounds match."""
        return (
            _at_most(discount_share, self.max_discount_share)
            and _at_least(discount_share, self.min_discount_share)
            and _at_most(average_order_value, self.max_average_order_value)
            and _at_least(average_order_value, self.min_average_order_value)
        )


def _in(bounds: tuple[int, int] | None, value: int) -> bool:
    return bounds is None or bounds[0] <= value <= bounds[1]


def _at_most(value: float, bound: float | None) -> bool:
    return bound is None or value <= bound


def _at_least(value: float, bound: float | None) -> bool:
    return bound is None or value >= bound


class SegmentRule(_Rule):
    name: str
    description: str = ""
    when: Condition = Condition()
    # Publish moves into this segment on their own marketing topic.
    marketing: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"segment name {value!r} must be lower_snake_case")
        if value == "likely_churned":  # customer.became_likely_churned is a churn-risk move
            raise ValueError(
                "segment name 'likely_churned' is reserved for the churn-risk transition "
                "customer.became_likely_churned"
            )
        return value


class PredictionRules(_Rule):
    """Churn risk from the shop's prediction model (see models.churn): a customer is likely
    churned once P(alive) is at or below the threshold, the shop's own if it has one."""

    churn_threshold: Probability = 0.3
    # Written as a mapping (shop id: threshold); kept as sorted pairs, so rules stay hashable.
    churn_threshold_by_shop: tuple[tuple[str, Probability], ...] = ()

    @field_validator("churn_threshold_by_shop", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> object:
        if isinstance(value, dict):
            return tuple(sorted(value.items()))
        return value

    def churn_threshold_for(self, shop_id: str) -> float:
        return dict(self.churn_threshold_by_shop).get(shop_id, self.churn_threshold)


class SegmentRules(_Rule):
    """A versioned rule set; the version travels on every transition it causes."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    scoring: Scoring
    inactivity: InactivityRule = InactivityRule()
    tags: Tags = Tags()
    predictions: PredictionRules = PredictionRules()
    segments: Annotated[tuple[SegmentRule, ...], Field(min_length=1)]

    @field_validator("segments")
    @classmethod
    def _unique(cls, segments: tuple[SegmentRule, ...]) -> tuple[SegmentRule, ...]:
        names = [s.name for s in segments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"segment names must be unique; repeated: {duplicates}")
        return segments

    @property
    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    @cached_property
    def uses_predictions(self) -> bool:
        """Whether a segment condition asks the shops' prediction models: then a customer's
        segment also depends on their shop's model and moves when P(alive) or CLV crosses a
        bound (``models.predictive``)."""
        return any(s.when.predictive for s in self.segments)

    @cached_property
    def prediction_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The P(alive) thresholds and the CLV top shares the conditions use, sorted."""
        alive = {v for s in self.segments for v in (s.when.max_p_alive, s.when.min_p_alive) if v}
        shares = {s.when.clv_top_share for s in self.segments if s.when.clv_top_share}
        return tuple(sorted(alive)), tuple(sorted(shares))


class Cell(NamedTuple):
    """One combination the checker walks: the two flags and the three scores (a tuple: made
    several times per order, and the key of the compiled rule map)."""

    inactive: bool
    single_order: bool
    r: int
    f: int
    m: int

    def describe(self) -> str:
        flags = ("inactive" if self.inactive else "active") + (
            ", single order" if self.single_order else ", repeat buyer"
        )
        return f"r={self.r} f={self.f} m={self.m} ({flags})"


class PredictionView(Protocol):
    """A customer's predictions at one instant, as the prediction bounds ask about them (None:
    not known, the shop having no model or no spend model)."""

    def p_alive_at_most(self, threshold: float) -> bool | None: ...

    def clv_in_top(self, share: float) -> bool | None: ...


class SegmentFacts(NamedTuple):
    """What a segment decision needs about a customer at one instant."""

    cell: Cell
    discount_share: float
    average_order_value: int
    # Only for a rule set that uses predictions (``SegmentRules.uses_predictions``).
    predictions: PredictionView | None = None


def decide(facts: SegmentFacts | None, rules: SegmentRules) -> str | None:
    """The first segment whose condition matches; None for a customer with no orders.

    Compiled: per rule set and score cell, the segments whose flags and scores match, in rule
    order, up to the first that has no partial bounds (no later one can win); only their
    partial bounds are looked at per customer."""
    if facts is None:
        return None
    for name, bounds in _cell_candidates(rules, facts.cell):
        if bounds is None or bounds.matches_partial(facts):
            return name
    return None


def bounds_matched(rules: SegmentRules, discount_share: float, average_order_value: int) -> int:
    """Which segments' partial (money and share) bounds a customer with these values is
    within: segment ``i``'s bit is ``1 << i``. With the score cell it is all that ``decide``
    looks at (see ``decide_matched``)."""
    matched = 0
    for bit, bounds in _PARTIAL.get(rules, _partial_bounds):
        if bounds.matches_bounds(discount_share, average_order_value):
            matched |= bit
    return matched


def decide_matched(cell: Cell, matched: int, rules: SegmentRules) -> str | None:
    """``decide`` for a customer in score cell ``cell`` within the partial bounds ``matched``
    (``bounds_matched``)."""
    bits = _BITS.get(rules, _segment_bits)
    for name, bounds in _cell_candidates(rules, cell):
        if bounds is None or matched & bits[name]:
            return name
    return None


def _segment_bits(rules: SegmentRules) -> dict[str, int]:
    return {segment.name: 1 << i for i, segment in enumerate(rules.segments)}


def _partial_bounds(rules: SegmentRules) -> tuple[tuple[int, Condition], ...]:
    """The segments with partial bounds a customer can be within by money and share alone: a
    condition on predictions is met by no customer here (``bounds_matched`` serves customers
    whose shop has no prediction model; the others are decided with ``decide``)."""
    bits = _BITS.get(rules, _segment_bits)
    return tuple(
        (bits[s.name], s.when) for s in rules.segments if s.when.partial and not s.when.predictive
    )


_BITS: IdentityMemo[SegmentRules, dict[str, int]] = IdentityMemo(64)
_PARTIAL: IdentityMemo[SegmentRules, tuple[tuple[int, Condition], ...]] = IdentityMemo(64)


_Candidates = tuple[tuple[str, Condition | None], ...]
# the per-cell candidates of the rule sets seen last (a rule set is immutable), filled as
# cells are met
_COMPILED: IdentityMemo[SegmentRules, dict[Cell, _Candidates]] = IdentityMemo(64)


def _compiled(rules: SegmentRules) -> dict[Cell, _Candidates]:
    return _COMPILED.get(rules, _empty_map)


def _cell_candidates(rules: SegmentRules, cell: Cell) -> _Candidates:
    """The segments that can match in ``cell``, in rule order (see ``decide``)."""
    table = _compiled(rules)
    candidates = table.get(cell)
    if candidates is None:
        candidates = table[cell] = _candidates(rules, cell)
    return candidates


def _empty_map(_rules: SegmentRules) -> dict[Cell, _Candidates]:
    return {}


def _candidates(rules: SegmentRules, cell: Cell) -> _Candidates:
    found: list[tuple[str, Condition | None]] = []
    for segment in rules.segments:
        when = segment.when
        if not when.matches_cell(cell):
            continue
        if not when.partial:
            found.append((segment.name, None))
            break
        found.append((segment.name, when))
    return tuple(found)
