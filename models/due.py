"""Due times: the instant a customer changes segment if no further order arrives.

``next_due`` is asked of every state the fold writes, so its answers are remembered twice: per
state object (``remember_due`` hands it the due time stored with a state), and per *shape*,
what the search for the instant depends on, as offsets from the last order (most customers
share a few thousand shapes).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from models.events import Metrics
from models.predictive import Predictive, due_instants
from models.privacy import consented
from models.rules import Cell, SegmentFacts, bounds_matched, decide, decide_matched
from models.scoring import recency_drops, score_recency
from models.segment_model import SegmentModel, current_metrics, needs_reevaluation
from models.state import CustomerState, elapsed_days

# Bumped whenever next_due gives another instant for the same state, rules and calibration: a
# due time stored by an earlier version is then computed again instead of taken.
DUE_VERSION: Final = 1


def next_due(state: CustomerState, model: SegmentModel) -> datetime | None:
    """The instant the customer changes segment if no further order arrives (None: never).

    Candidates are the instants the recency score can drop, the personal inactivity threshold
    and the end of the minimum dwell (and, for rules that ask predictions, the instants their
    prediction bounds flip); the first candidate at which the segment differs wins.
    """
    return model._due.get(state, lambda s: _next_due(s, model))


def remember_due(state: CustomerState, model: SegmentModel, due: datetime | None) -> None:
    """Hand ``next_due`` the due time already known for this very state object: the one
    stored with it, computed when it was written. Taken only for a consenting customer
    decided under the model's rule set and calibration (then ``next_due`` would give the same
    instant); else ignored, and ``next_due`` computes it."""
    if not needs_reevaluation(state, model) and consented(state, model.consent_required):
        model._due.put(state, due)


def dwell_ends_at(state: CustomerState, model: SegmentModel) -> datetime | None:
    """The end of the customer's minimum dwell in their current segment (None: no dwell)."""
    dwell = model.rules.scoring.min_dwell_days
    if not dwell or state.segment_since is None:
        return None
    return state.segment_since + timedelta(days=dwell)


def _next_due(state: CustomerState, model: SegmentModel) -> datetime | None:
    if state.segment is None or state.as_of is None:
        return None
    # Time moves the recency score only: the rest is the state's current figures.
    m = current_metrics(state, model)
    last = m.last_order_at
    if last is None or m.inactive_after_days is None:
        return None
    dwell_end = dwell_ends_at(state, model)
    if dwell_end is not None and dwell_end <= state.as_of:
        dwell_end = None  # over: it neither is a candidate nor holds one back (fewer shapes)
    if model.prediction is not None and model.rules.uses_predictions:
        return _predictive_due(state, model, m, dwell_end)
    # What the search for the instant depends on, every instant as an offset from the last
    # order: customers of the same shape change segment at the same offset (most customers
    # share a few thousand shapes; a new customer's is their segment, inactivity threshold, F
    # and M scores and which money bounds they are within).
    shape: Shape = (
        state.segment,
        state.as_of - last,
        None if dwell_end is None else dwell_end - last,
        m.inactive_after_days,
        m.order_count == 1,
        m.f_score,
        m.m_score,
        bounds_matched(model.rules, m.discount_share, m.average_order_value),
    )
    return due_of_shape(model, last, shape)


def due_of_shape(model: SegmentModel, last: datetime, shape: Shape) -> datetime | None:
    """The due time of a customer of this shape whose last order was at ``last``: the offset
    remembered per shape and model, found by ``_due_offset`` the first time."""
    shapes = model._shapes
    try:
        offset = shapes[shape]
    except KeyError:
        offset = _due_offset(shape, model)
        if len(shapes) >= SHAPES_SIZE:
            shapes.clear()
        shapes[shape] = offset
    return None if offset is None else last + offset


# (segment, as_of, end of the minimum dwell or None, inactivity threshold in days, single
# order, F score, M score, money bounds matched): the instants relative to the last order.
Shape = tuple[str, timedelta, timedelta | None, float, bool, int | None, int | None, int]
# Shapes remembered per shop model (about 300 bytes each): a few hundred shapes cover most
# customers (new customers' above all); a repeat customer's personal inactivity threshold
# often makes a shape of its own.
SHAPES_SIZE: Final = 4_096


def _due_offset(shape: Shape, model: SegmentModel) -> timedelta | None:
    """How long after the last order a customer of this shape first changes segment if no
    further order arrives (None: never). Candidates are the offsets at which the recency score
    can drop, the inactivity threshold and the end of the minimum dwell; the first candidate
    after ``as_of`` (and not before the dwell ends) at which the segment differs wins."""
    segment, as_of, dwell_end, inactive_after, single, f, m, matched = shape
    cuts = model.calibration.cutoffs.recency_days
    candidates = set(recency_drops(cuts))
    candidates.add(timedelta(days=inactive_after))
    if dwell_end is not None:
        candidates.add(dwell_end)
    for offset in sorted(candidates):
        if offset <= as_of or (dwell_end is not None and offset < dwell_end):
            continue
        if not (f and m):
            return offset  # without scores no segment: not the customer's
        recency = elapsed_days(offset)
        cell = Cell(recency >= inactive_after, single, score_recency(recency, cuts), f, m)
        if decide_matched(cell, matched, model.rules) != segment:
            return offset
    return None


def _predictive_due(
    state: CustomerState, model: SegmentModel, m: Metrics, dwell_end: datetime | None
) -> datetime | None:
    """``_due_offset`` for rules that ask predictions, per customer (no shapes: the instants
    their bounds flip are the customer's own), over absolute instants."""
    last, inactive_after = m.last_order_at, m.inactive_after_days
    assert last is not None and inactive_after is not None and state.as_of is not None
    cuts = model.calibration.cutoffs.recency_days
    candidates = {last + offset for offset in recency_drops(cuts)}
    candidates.add(last + timedelta(days=inactive_after))
    candidates.update(due_instants(state, model.prediction, model.rules))
    if dwell_end is not None:
        candidates.add(dwell_end)
    for instant in sorted(candidates):
        if instant <= state.as_of or (dwell_end is not None and instant < dwell_end):
            continue
        if not (m.f_score and m.m_score):
            return instant  # without scores no segment: not the customer's
        recency = elapsed_days(instant - last)
        cell = Cell(
            recency >= inactive_after,
            m.order_count == 1,
            score_recency(recency, cuts),
            m.f_score,
            m.m_score,
        )
        predicted = Predictive(state, model.prediction, instant)
        facts = SegmentFacts(cell, m.discount_share, m.average_order_value, predicted)
        if decide(facts, model.rules) != state.segment:
            return instant
    return None
