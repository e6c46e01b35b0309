"""The folds: apply an order event to a customer's state, let time pass, re-evaluate.

All are pure: ``(state, input, model) -> (new state, transitions)``. They never read the system
clock; time-caused transitions happen at the instant the caller gives. Together they give:

- idempotency: an event already reflected in the state changes nothing (no revision bump);
- order independence: the stored records are the same whatever order events arrive in;
- deterministic transition ids: the same input yields the same ``event_id``;
- no flapping: when cut-offs move (recalibration), scores are sticky within the hysteresis
  margin; moves caused by time or recalibration wait for the minimum dwell time in the current
  segment. Orders and time alone give scores that depend on the customer's orders only, so any
  arrival order of the same orders gives the same state.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from models.events import (
    Cause,
    CauseKind,
    ConsentChanged,
    ErasureRequested,
    Metrics,
    OrderCancelled,
    OrderPlaced,
    OrderRefunded,
    SegmentChanged,
    TagChanged,
    Transition,
    tag_transition_name,
    transition_name,
)
from models.frozen import evolve
from models.memo import IdentityMemo
from models.privacy import consented
from models.rules import (
    Cell,
    SegmentFacts,
    SegmentRules,
    bounds_matched,
    decide,
    decide_matched,
)
from models.scoring import Calibration, Scores, recency_drops, score_recency
from models.state import (
    CustomerState,
    OrderRecord,
    ScoreMode,
    compute_metrics,
    elapsed_days,
)
from models.tags import compute_tags

OrderEventT = OrderPlaced | OrderCancelled | OrderRefunded

TRANSITION_NAMESPACE: Final = uuid.UUID("6f1c2d8e-4b0a-5a51-9d7e-3c2f1a0b9e47")
# Causes that are not the customer's own doing, and could make a customer near a boundary
# flap: they respect the minimum dwell time. (A rule change is a deliberate act: it applies at
# once.)
_DEFERRABLE: Final = frozenset({"time", "recalibration"})
_MAX_TIME_STEPS: Final = 16
# How each cause scores: an order rescores everything from the customer's own values; time can
# only move recency; a re-evaluation keeps scores within the hysteresis margin.
_SCORING: Final[dict[str, ScoreMode]] = {
    "order_placed": "fresh",
    "order_cancelled": "fresh",
    "order_refunded": "fresh",
    "time": "time",
    "recalibration": "sticky",
    "rule_change": "sticky",
    "consent_granted": "fresh",
    "consent_withdrawn": "fresh",
    "erasure": "fresh",
}


@dataclass(frozen=True)
class SegmentModel:
    """The rule set and the calibration of the customer's shop, and the consent policy."""

    rules: SegmentRules
    calibration: Calibration
    # True: a customer without a consent record is not segmented.
    consent_required: bool = False
    # next_due of the states seen last (next_due is asked of the same state more than once,
    # within the processing of one event)
    _due: IdentityMemo[CustomerState, datetime | None] = field(
        default_factory=IdentityMemo, init=False, repr=False, compare=False, hash=False
    )
    # current_metrics of the states decided last, as their evaluation computed them
    _current: IdentityMemo[CustomerState, Metrics] = field(
        default_factory=IdentityMemo, init=False, repr=False, compare=False, hash=False
    )
    # next_due's answers by shape (see _next_due), as offsets from the last order
    _shapes: dict[_Shape, timedelta | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )


@dataclass(frozen=True)
class Evaluation:
    metrics: Metrics
    segment: str | None
    tags: tuple[str, ...]
    scores: Scores | None


class OrderRejected(ValueError):
    """An order event that is well-formed but cannot be applied to this customer's state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def bootstrap_calibration(rules: SegmentRules, shop_id: str) -> Calibration:
    """The calibration of a shop that has none yet: the rule file's fixed cut-offs."""
    version = "bootstrap" if rules.scoring.mode == "quantile" else f"fixed:{rules.version}"
    return Calibration(
        shop_id=shop_id, version=version, method="fixed", cutoffs=rules.scoring.cutoffs
    )


def evaluate(
    state: CustomerState,
    at: datetime,
    model: SegmentModel,
    *,
    scoring: ScoreMode = "fresh",
    tags: bool = True,
) -> Evaluation:
    """Metrics, segment and tags of the customer as of ``at`` (``scoring``: see
    ``compute_metrics``; ``tags=False``: the segment only, tags left empty)."""
    rules = model.rules
    m = compute_metrics(state, at, rules, model.calibration, scoring=scoring)
    scores = None
    facts = None
    if not consented(state, model.consent_required):
        return Evaluation(m, None, (), None)  # segmented only with consent
    if m.order_count and m.r_score and m.f_score and m.m_score:
        scores = Scores(r=m.r_score, f=m.f_score, m=m.m_score)
        inactive = (
            m.recency_days is not None
            and m.inactive_after_days is not None
            and m.recency_days >= m.inactive_after_days
        )
        cell = Cell(inactive, m.order_count == 1, scores.r, scores.f, scores.m)
        facts = SegmentFacts(cell, m.discount_share, m.average_order_value)
    return Evaluation(
        m, decide(facts, rules), compute_tags(state, rules.tags) if tags else (), scores
    )


def apply_order(
    state: CustomerState | None, event: OrderEventT, model: SegmentModel
) -> tuple[CustomerState, list[Transition]]:
    """Fold one order event into the state; returns the new state and the transitions."""
    if state is None:
        state = CustomerState(shop_id=event.shop_id, customer_id=event.customer_id)
    state, fired = due_transitions(state, event.occurred_at, model)
    recorded = _record(state, event)
    if recorded is None:  # already applied: a redelivery or a duplicate from the webshop
        return state, fired
    at = max(state.as_of, event.occurred_at) if state.as_of else event.occurred_at
    updated = evolve(recorded, as_of=at, revision=state.revision + 1)
    refund = event.refund_key if isinstance(event, OrderRefunded) else None
    cause = Cause(kind=event.type, order_id=event.order_id, refund_id=refund)
    new_state, changed = _resegment(state, updated, at, cause, model)
    return new_state, fired + changed


def apply_consent(
    state: CustomerState | None, event: ConsentChanged, model: SegmentModel
) -> tuple[CustomerState, list[Transition]]:
    """Record a consent decision. The newest decision (by its time) wins, so redelivered and
    late events change nothing; a withdrawal moves the customer out of every segment and tag,
    a grant segments them again."""
    if state is None:
        state = CustomerState(shop_id=event.shop_id, customer_id=event.customer_id)
    decision = "granted" if event.type == "consent_granted" else "withdrawn"
    if state.consent_at is not None and event.occurred_at <= state.consent_at:
        return state, []
    at = max(state.as_of, event.occurred_at) if state.as_of else event.occurred_at
    updated = evolve(
        state,
        consent=decision,
        consent_at=event.occurred_at,
        as_of=at,
        revision=state.revision + 1,
    )
    return _resegment(state, updated, at, Cause(kind=event.type), model)


def erase(state: CustomerState, event: ErasureRequested, model: SegmentModel) -> list[Transition]:
    """The last transitions of an erased customer: out of their segment and tags, so every
    downstream copy learns to forget them. The state itself is deleted by the caller."""
    at = max(state.as_of, event.occurred_at) if state.as_of else event.occurred_at
    gone = evolve(state, orders={}, consent="withdrawn")
    return _resegment(state, gone, at, Cause(kind="erasure"), model)[1]


def due_transitions(
    state: CustomerState,
    now: datetime,
    model: SegmentModel,
    cause: CauseKind = "time",
) -> tuple[CustomerState, list[Transition]]:
    """The transitions time causes up to ``now``, each stamped with its exact due time.

    ``cause``: what the moves are attributed to; a re-evaluation catching up with time under a
    new rule set or calibration passes its own cause, so those moves are told apart.

    A state last decided under another rule set or calibration is re-evaluated first
    (``reevaluate``): time alone would keep the F and M scores of the old cut-offs and stamp
    the new versions on them, and the re-evaluation would then never come."""
    if needs_reevaluation(state, model):
        return reevaluate(state, model, now)
    fired: list[Transition] = []
    for _ in range(_MAX_TIME_STEPS):
        due = next_due(state, model)
        if due is None or due > now:
            break
        at = max(due, state.as_of) if state.as_of else due
        updated = evolve(state, as_of=at, revision=state.revision + 1)
        state, changed = _resegment(state, updated, at, Cause(kind=cause), model)
        if not changed:
            break
        fired += changed
    return state, fired


def needs_reevaluation(state: CustomerState, model: SegmentModel) -> bool:
    """Whether the state was last evaluated under another rule set or calibration."""
    return (
        state.rule_version != model.rules.version
        or state.calibration_version != model.calibration.version
    )


def reevaluate(
    state: CustomerState, model: SegmentModel, now: datetime
) -> tuple[CustomerState, list[Transition]]:
    """Re-decide under a new rule set or calibration as of the state's own latest instant, then
    catch up with time until ``now`` under the same cause (so moves that follow from the new
    rules or cut-offs are never passed off as caused by time). The event times, and so the
    transition ids, do not depend on when the worker gets to it."""
    if not needs_reevaluation(state, model) or state.as_of is None:
        return state, []
    kind: CauseKind = (
        "rule_change" if state.rule_version != model.rules.version else "recalibration"
    )
    updated = evolve(state, revision=state.revision + 1)
    state, moved = _resegment(state, updated, state.as_of, Cause(kind=kind), model)
    state, caught_up = due_transitions(state, now, model, cause=kind)
    return state, moved + caught_up


def next_due(state: CustomerState, model: SegmentModel) -> datetime | None:
    """The instant the customer changes segment if no further order arrives (None: never).

    Candidates are the instants the recency score can drop, the personal inactivity threshold
    and the end of the minimum dwell; the first candidate at which the segment differs wins.
    """
    return model._due.get(state, lambda s: _next_due(s, model))


# Bumped whenever next_due gives another instant for the same state, rules and calibration: a
# due time stored by an earlier version is then computed again instead of taken.
DUE_VERSION: Final = 1


def remember_due(state: CustomerState, model: SegmentModel, due: datetime | None) -> None:
    """Hand ``next_due`` the due time already known for this very state object: the one
    stored with it, computed when it was written. Taken only for a consenting customer
    decided under the model's rule set and calibration (then ``next_due`` would give the same
    instant); else ignored, and ``next_due`` computes it."""
    if not needs_reevaluation(state, model) and consented(state, model.consent_required):
        model._due.put(state, due)


def current_metrics(state: CustomerState, model: SegmentModel) -> Metrics:
    """The customer's figures as of their latest instant (``as_of``), with the scores their
    segment was decided with (what Redis shows). Memoised: the evaluation that decided the
    state hands its figures on."""
    if state.as_of is None:
        raise ValueError("a state without an instant has no current figures")
    return model._current.get(state, lambda s: _current_metrics(s, model))


def _current_metrics(state: CustomerState, model: SegmentModel) -> Metrics:
    assert state.as_of is not None
    metrics = compute_metrics(state, state.as_of, model.rules, model.calibration)
    scores = state.scores
    if scores is None:
        return metrics
    return evolve(metrics, r_score=scores.r, f_score=scores.f, m_score=scores.m)


def _next_due(state: CustomerState, model: SegmentModel) -> datetime | None:
    if state.segment is None or state.as_of is None:
        return None
    # Time moves the recency score only: the rest is the state's current figures.
    m = current_metrics(state, model)
    last = m.last_order_at
    if last is None or m.inactive_after_days is None:
        return None
    dwell_end = _dwell_end(state, model)
    if dwell_end is not None and dwell_end <= state.as_of:
        dwell_end = None  # over: it neither is a candidate nor holds one back (fewer shapes)
    # What the search for the instant depends on, every instant as an offset from the last
    # order: customers of the same shape change segment at the same offset (most customers
    # share a few thousand shapes; a new customer's is their segment, inactivity threshold, F
    # and M scores and which money bounds they are within).
    shape: _Shape = (
        state.segment,
        state.as_of - last,
        None if dwell_end is None else dwell_end - last,
        m.inactive_after_days,
        m.order_count == 1,
        m.f_score,
        m.m_score,
        bounds_matched(model.rules, m.discount_share, m.average_order_value),
    )
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
_Shape = tuple[str, timedelta, timedelta | None, float, bool, int | None, int | None, int]
# Shapes remembered per shop model (about 300 bytes each): a few hundred shapes cover most
# customers (new customers' above all); a repeat customer's personal inactivity threshold
# often makes a shape of its own.
SHAPES_SIZE: Final = 4_096


def _due_offset(shape: _Shape, model: SegmentModel) -> timedelta | None:
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


def _dwell_end(state: CustomerState, model: SegmentModel) -> datetime | None:
    dwell = model.rules.scoring.min_dwell_days
    if not dwell or state.segment_since is None:
        return None
    return state.segment_since + timedelta(days=dwell)


def transition_id(
    state: CustomerState, change: str, cause: Cause, at: datetime, model: SegmentModel
) -> str:
    """A stable id: the same customer, change, cause, instant and versions give the same id."""
    parts = (
        state.shop_id,
        state.customer_id,
        change,
        cause.kind,
        cause.order_id or "",
        cause.refund_id or "",
        at.isoformat(),
        model.rules.version,
        model.calibration.version,
    )
    return uuid5_text("\x1f".join(parts))


_NAMESPACE_BYTES: Final = TRANSITION_NAMESPACE.bytes


def uuid5_text(name: str) -> str:
    """``str(uuid.uuid5(TRANSITION_NAMESPACE, name))``, without the UUID objects (a few
    transitions per order make them count)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _resegment(
    before: CustomerState,
    after: CustomerState,
    at: datetime,
    cause: Cause,
    model: SegmentModel,
) -> tuple[CustomerState, list[Transition]]:
    scoring = _SCORING[cause.kind]
    result = evaluate(after, at, model, scoring=scoring)
    segment = result.segment
    dwell_end = _dwell_end(before, model)
    if (
        cause.kind in _DEFERRABLE
        and before.segment is not None
        and segment is not None
        and dwell_end is not None
        and at < dwell_end
    ):
        segment = before.segment  # not the customer's doing: wait for the dwell time
    common = {
        "shop_id": before.shop_id,
        "customer_id": before.customer_id,
        "cause": cause,
        "event_time": at,
        "rule_version": model.rules.version,
        "calibration_version": model.calibration.version,
    }
    transitions: list[Transition] = []
    if segment != before.segment:
        transitions.append(
            SegmentChanged(
                event_id=transition_id(before, f"{before.segment}>{segment}", cause, at, model),
                transition=transition_name(segment),
                from_segment=before.segment,
                to_segment=segment,
                metrics_before=(
                    compute_metrics(before, at, model.rules, model.calibration, scoring=scoring)
                    if before.segment
                    else None
                ),
                metrics_after=result.metrics,
                **common,
            )
        )
    tag_changes: tuple[tuple[Literal["added", "removed"], list[str]], ...] = (
        ("removed", sorted(set(before.tags) - set(result.tags))),
        ("added", sorted(set(result.tags) - set(before.tags))),
    )
    for change, tags in tag_changes:
        for tag in tags:
            transitions.append(
                TagChanged(
                    event_id=transition_id(before, f"{change}:{tag}", cause, at, model),
                    transition=tag_transition_name(change),
                    tag=tag,
                    change=change,
                    **common,
                )
            )
    update: dict[str, object] = {
        "segment": segment,
        "scores": result.scores,
        "tags": result.tags,
        "rule_version": model.rules.version,
        "calibration_version": model.calibration.version,
    }
    if segment != before.segment:
        update["segment_since"] = at
    decided = evolve(after, **update)
    if decided.as_of == at and (result.scores is not None or scoring == "fresh"):
        # the figures of the evaluation are the state's current figures: with the scores
        # the state keeps, or (no scores kept) scored fresh like _current_metrics does
        model._current.put(decided, result.metrics)
    return decided, transitions


_NOT_SEEN: Final = OrderRecord()  # an order no event of which was seen yet


def _record(state: CustomerState, event: OrderEventT) -> CustomerState | None:
    """The state with the event's contribution recorded, or None if it is already there."""
    record = state.orders.get(event.order_id, _NOT_SEEN)
    currency = state.currency
    if isinstance(event, OrderPlaced):
        if record.placed_at is not None:
            return None
        currency = _check_currency(state, event.currency)
        categories: dict[str, int] = {}
        for line in event.lines:
            categories[line.category] = (
                categories.get(line.category, 0) + line.quantity * line.unit_price
            )
        record = evolve(
            record,
            placed_at=event.occurred_at,
            total=event.total,
            discount=event.discount,
            categories=categories,
        )
    elif isinstance(event, OrderCancelled):
        if record.cancelled:
            return None
        record = evolve(record, cancelled=True)
    else:
        if event.refund_key in record.refunds:
            return None
        currency = _check_currency(state, event.currency)
        record = evolve(record, refunds={**record.refunds, event.refund_key: event.total})
    return evolve(state, currency=currency, orders={**state.orders, event.order_id: record})


def _check_currency(state: CustomerState, currency: str) -> str:
    if state.currency is not None and state.currency != currency:
        raise OrderRejected(
            "currency_mismatch",
            f"customer {state.customer_id} buys in {state.currency}, event is in {currency}",
        )
    return currency
