"""R, F and M scores (1..5) from frozen, versioned cut-offs, with hysteresis.

A calibration holds four ascending cut-offs per dimension. Quantile calibrations are computed
from all customers of a shop at one instant and then frozen: a customer's score changes only by
their own activity, by time passing, or by an explicit recalibration, never because other
customers bought something. Fixed calibrations come straight from the rule file.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from statistics import quantiles
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Cuts = Annotated[tuple[float, float, float, float], Field()]


class Cutoffs(BaseModel):
    """Quintile boundaries: a value above the k-th cut-off scores at least k+1 (recency reversed:
    more days since the last order scores lower)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recency_days: Cuts
    frequency: Cuts
    monetary: Cuts

    @field_validator("recency_days", "frequency", "monetary")
    @classmethod
    def _ascending(cls, cuts: tuple[float, ...]) -> tuple[float, ...]:
        if any(b < a for a, b in itertools.pairwise(cuts)):
            raise ValueError(f"cut-offs must be ascending, got {list(cuts)}")
        if cuts[0] < 0:
            raise ValueError("cut-offs must not be negative")
        # The precision of the values scored (days to 4 decimals), so due times are exact.
        return tuple(round(c, 4) for c in cuts)


class Calibration(BaseModel):
    """A frozen set of cut-offs for one shop, with the version that travels on transitions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shop_id: str
    version: str
    method: Literal["fixed", "quantile"]
    cutoffs: Cutoffs
    customers: int = 0
    computed_at: datetime | None = None


class Scores(BaseModel):
    model_config = ConfigDict(frozen=True)

    r: int
    f: int
    m: int


def score_higher_is_better(value: float, cuts: Sequence[float]) -> int:
    # cut-offs are ascending (validated): the cut-offs below the value, by bisection
    return 1 + bisect_left(cuts, value)


def score_recency(days: float, cuts: Sequence[float]) -> int:
    # ``>=``: the score drops at the very instant the boundary is reached, which is when a
    # time-caused transition is due.
    return 5 - bisect_right(cuts, days)


def _sticky(raw_up: int, raw_down: int, previous: int) -> int:
    """Keep the previous score unless the value is clearly past a boundary (beyond the margin)."""
    if raw_up > previous:
        return raw_up
    if raw_down < previous:
        return raw_down
    return previous


@lru_cache(maxsize=1024)
def scaled_cutoffs(cuts: tuple[float, ...], factor: float) -> tuple[float, ...]:
    """Cut-offs moved by ``factor`` (the hysteresis margin's), as scores are computed with them."""
    # Rounded like the elapsed days are, so a due time computed from a boundary is exact.
    return tuple(round(c * factor, 4) for c in cuts)


def compute_scores(
    recency_days: float,
    frequency: int,
    monetary: int,
    cutoffs: Cutoffs,
    previous: Scores | None,
    margin: float,
) -> Scores:
    """Scores for these values. With ``previous`` scores, a score only moves when the value is
    more than ``margin`` (relative) past the boundary, so customers near one do not flap."""
    r_cuts, f_cuts, m_cuts = cutoffs.recency_days, cutoffs.frequency, cutoffs.monetary
    if previous is None:  # nothing to stick to: the raw scores
        return Scores(
            r=score_recency(recency_days, r_cuts),
            f=score_higher_is_better(frequency, f_cuts),
            m=score_higher_is_better(monetary, m_cuts),
        )
    hi, lo = 1 + margin, 1 - margin
    return Scores(
        r=_sticky(
            score_recency(recency_days, scaled_cutoffs(r_cuts, lo)),
            score_recency(recency_days, scaled_cutoffs(r_cuts, hi)),
            previous.r,
        ),
        f=_sticky(
            score_higher_is_better(frequency, scaled_cutoffs(f_cuts, hi)),
            score_higher_is_better(frequency, scaled_cutoffs(f_cuts, lo)),
            previous.f,
        ),
        m=_sticky(
            score_higher_is_better(monetary, scaled_cutoffs(m_cuts, hi)),
            score_higher_is_better(monetary, scaled_cutoffs(m_cuts, lo)),
            previous.m,
        ),
    )


@lru_cache(maxsize=256)
def recency_drops(recency_cuts: tuple[float, ...]) -> tuple[timedelta, ...]:
    """How long after the last order the recency score drops (one offset per distinct
    recency cut-off, ascending)."""
    return tuple(timedelta(days=d) for d in sorted(set(recency_cuts)))


def quintile_cuts(values: Sequence[float]) -> tuple[float, float, float, float]:
    """The 20/40/60/80 % quantiles (inclusive method); all equal for fewer than two values."""
    if not values:
        return (0.0, 0.0, 0.0, 0.0)
    if len(values) == 1:
        v = float(values[0])
        return (v, v, v, v)
    q = quantiles([float(v) for v in values], n=5, method="inclusive")
    return (round(q[0], 4), round(q[1], 4), round(q[2], 4), round(q[3], 4))


def calibrate(
    shop_id: str,
    version: str,
    computed_at: datetime,
    values: Sequence[tuple[float, int, int]],
) -> Calibration:
    """A quantile calibration from (recency days, frequency, monetary) of a shop's customers."""
    return Calibration(
        shop_id=shop_id,
        version=version,
        method="quantile",
        customers=len(values),
        computed_at=computed_at,
        cutoffs=Cutoffs(
            recency_days=quintile_cuts([v[0] for v in values]),
            frequency=quintile_cuts([v[1] for v in values]),
            monetary=quintile_cuts([v[2] for v in values]),
        ),
    )
