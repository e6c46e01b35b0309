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

The shop's model is in ``models.segment_model``, due times in ``models.due``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from models import fastfold, ids
from models.due import dwell_ends_at, next_due
from models.events import (
    Cause,
    CauseKind,
    ConsentChanged,
    ErasureRequested,
    Metrics,
    OrderCancelled,
    OrderEventT,
    OrderPlaced,
    OrderRefunded,
    SegmentChanged,
    TagChanged,
    Transition,
    tag_transition_name,
    transition_name,
)
from models.frozen import evolve
from models.predictive import Predictive
from models.privacy import consented
from models.rules import Cell, SegmentFacts, Tags, decide
from models.scoring import Scores
from models.segment_model import SegmentModel, needs_reevaluation
from models.state import (
    MAX_CATEGORIES,
    MAX_EARLIER_GAPS,
    MAX_ORDER_CATEGORIES,
    MAX_REFUNDS,
    MAX_WAITING,
    WINDOW_ORDERS,
    CustomerState,
    EarlierOrders,
    OrderRecord,
    ScoreMode,
    capped_categories,
    compute_metrics,
    utc_day,
)
from models.tags import compute_tags, tags_after

TRANSITION_NAMESPACE: Final = uuid.UUID("6f1c2d8e-4b0a-5a51-9d7e-3c2f1a0b9e47")
# Causes that are not the customer's own doing, and could make a customer near a boundary
# flap: they respect the minimum dwell time. (A rule change is a deliberate act: it applies at
# once.)
_DEFERRABLE: Final = frozenset({"time", "recalibration", "model_refit"})
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
    "model_refit": "sticky",
    "consent_granted": "fresh",
    "consent_withdrawn": "fresh",
    "erasure": "fresh",
}


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` found: the figures, the segment (None: none), the tags and the
    scores the segment was decided with."""

    metrics: Metrics
    segment: str | None
    tags: tuple[str, ...]
    scores: Scores | None


class OrderRejected(ValueError):
    """An order event that is well-formed but cannot be applied to this customer's state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
        predicted = None
        if model.prediction is not None and rules.uses_predictions:
            predicted = Predictive(state, model.prediction, at)
        facts = SegmentFacts(cell, m.discount_share, m.average_order_value, predicted)
    return Evaluation(
        m, decide(facts, rules), compute_tags(state, rules.tags) if tags else (), scores
    )


def apply_order(
    state: CustomerState | None, event: OrderEventT, model: SegmentModel
) -> tuple[CustomerState, list[Transition]]:
    """Fold one order event into the state; returns the new state and the transitions.

    The common case takes the fast path (``models.fastfold``), which gives exactly what
    ``apply_order_reference`` gives; everything else is the reference's."""
    fast = fastfold.apply_placed(state, event, model)
    if fast is not None:
        return fast
    return apply_order_reference(state, event, model)


def apply_order_reference(
    state: CustomerState | None, event: OrderEventT, model: SegmentModel
) -> tuple[CustomerState, list[Transition]]:
    """``apply_order`` as specified: every case, step by step."""
    if state is None:
        state = CustomerState(shop_id=event.shop_id, customer_id=event.customer_id)
    state, fired = due_transitions(state, event.occurred_at, model)
    recorded = _record(state, event, model.rules.tags)
    if recorded is None:  # already applied: a redelivery or a duplicate from the webshop
        return state, fired
    at = max(state.as_of, event.occurred_at) if state.as_of else event.occurred_at
    updated = evolve(recorded, as_of=at, revision=state.revision + 1)
    refund = event.refund_key if isinstance(event, OrderRefunded) else None
    cause = Cause(kind=event.type, order_id=event.order_id, refund_id=refund)
    new_state, changed = _resegment(state, updated, at, cause, model)
    return new_state, fired + changed


def waits_for_its_order(
    previous: CustomerState | None, new: CustomerState, event: OrderEventT
) -> bool:
    """Whether ``event`` is a cancellation or refund of an order the customer's state does not
    hold yet, newly recorded: it waits in the state for its order (events can arrive out of
    order). ``previous`` and ``new`` are ``apply_order``'s input and output; a fold that made
    no new state object recorded nothing new. Worth telling: a wrong order_id or shop_id would
    otherwise wait unnoticed for ever."""
    if event.type == "order_placed" or new is previous:
        return False
    kept = new.orders.get(event.order_id)
    return kept is not None and kept.placed_at is None


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
    gone = evolve(state, orders={}, earlier=None, consent="withdrawn")
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


def time_passes_to(
    state: CustomerState, at: datetime, model: SegmentModel
) -> tuple[CustomerState, list[Transition]]:
    """The state as of ``at``, an instant another layer around the fold schedules (the
    churn-risk crossing, ``models.churn``), re-decided there as time decides (the next
    revision). For an instant before which the fold has nothing due, as at a due time that
    changes nothing; unchanged if ``at`` is not after the state's latest instant or the state
    waits for a re-evaluation."""
    if state.as_of is None or at <= state.as_of or needs_reevaluation(state, model):
        return state, []
    updated = evolve(state, as_of=at, revision=state.revision + 1)
    return _resegment(state, updated, at, Cause(kind="time"), model)


def reevaluate(
    state: CustomerState, model: SegmentModel, now: datetime
) -> tuple[CustomerState, list[Transition]]:
    """Re-decide under a new rule set or calibration as of the state's own latest instant, then
    catch up with time until ``now`` under the same cause (so moves that follow from the new
    rules or cut-offs are never passed off as caused by time). The event times, and so the
    transition ids, do not depend on when the worker gets to it."""
    if not needs_reevaluation(state, model) or state.as_of is None:
        return state, []
    kind: CauseKind = "model_refit"
    if state.rule_version != model.rules.version:
        kind = "rule_change"
    elif state.calibration_version != model.calibration.version:
        kind = "recalibration"
    updated = evolve(state, revision=state.revision + 1)
    state, moved = _resegment(state, updated, state.as_of, Cause(kind=kind), model)
    state, caught_up = due_transitions(state, now, model, cause=kind)
    return state, moved + caught_up


def transition_id(
    state: CustomerState, change: str, cause: Cause, at: datetime, model: SegmentModel
) -> str:
    """A stable id: the same customer, change, cause, instant and versions give the same id."""
    parts: tuple[str, ...] = (
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
    if model.prediction_version is not None:  # rules that ask predictions
        parts += (model.prediction_version,)
    return uuid5_text("\x1f".join(parts))


_NAMESPACE_BYTES: Final = TRANSITION_NAMESPACE.bytes


def uuid5_text(name: str) -> str:
    """``str(uuid.uuid5(TRANSITION_NAMESPACE, name))`` (``models.ids``)."""
    return ids.uuid5_text(_NAMESPACE_BYTES, name)


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
    dwell_end = dwell_ends_at(before, model)
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
        "prediction_version": model.prediction_version,
    }
    if segment != before.segment:
        update["segment_since"] = at
    decided = evolve(after, **update)
    if decided.as_of == at and (result.scores is not None or scoring == "fresh"):
        # the figures of the evaluation are the state's current figures: with the scores
        # the state keeps, or (no scores kept) scored fresh like current_metrics does
        model._current.put(decided, result.metrics)
    return decided, transitions


_NOT_SEEN: Final = OrderRecord()  # an order no event of which was seen yet


def _record(state: CustomerState, event: OrderEventT, tags: Tags) -> CustomerState | None:
    """The state with the event's contribution recorded, or None if it is already there (or
    is taken to be: an order placed at or before the horizon of the orders folded out of the
    window). Raises ``OrderRejected`` beyond the state's bounds (refunds of one order,
    cancellations and refunds waiting for their order)."""
    record = state.orders.get(event.order_id, _NOT_SEEN)
    currency = state.currency
    if isinstance(event, OrderPlaced):
        if record.placed_at is not None:
            return None
        earlier = state.earlier
        if earlier is not None and earlier.holds(event.occurred_at, event.order_id):
            if record is _NOT_SEEN:
                return None
            # what waited for it goes with it: the order is taken as folded already
            orders = {k: v for k, v in state.orders.items() if k != event.order_id}
            return evolve(state, orders=orders)
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
            categories=capped_categories(categories, MAX_ORDER_CATEGORIES),
        )
    elif record is _NOT_SEEN and _waiting(state) >= MAX_WAITING:
        raise OrderRejected(
            "too_many_waiting",
            f"customer {state.customer_id} has {MAX_WAITING} cancellations or refunds waiting "
            f"for orders the state does not hold; order {event.order_id} is not held either",
        )
    elif isinstance(event, OrderCancelled):
        if record.cancelled:
            return None
        record = evolve(record, cancelled=True)
    else:
        if event.refund_key in record.refunds:
            return None
        if len(record.refunds) >= MAX_REFUNDS:
            raise OrderRejected(
                "too_many_refunds",
                f"order {event.order_id} has {MAX_REFUNDS} refunds already (the most kept)",
            )
        currency = _check_currency(state, event.currency)
        record = evolve(record, refunds={**record.refunds, event.refund_key: event.total})
    orders = {**state.orders, event.order_id: record}
    recorded = evolve(state, currency=currency, orders=orders)
    if len(orders) > WINDOW_ORDERS and isinstance(event, OrderPlaced):
        return _fold_oldest(recorded, tags)
    return recorded


def _waiting(state: CustomerState) -> int:
    return sum(1 for r in state.orders.values() if r.placed_at is None)


def _fold_oldest(state: CustomerState, tags: Tags) -> CustomerState:
    """The state with its oldest placed order folded into ``earlier`` if the window holds
    more than ``WINDOW_ORDERS`` placed orders (one order is recorded at a time: one is
    enough)."""
    placed = [(r.placed_at, oid) for oid, r in state.orders.items() if r.placed_at is not None]
    if len(placed) <= WINDOW_ORDERS:
        return state
    _, oldest = min(placed)
    record = state.orders[oldest]
    orders = {k: v for k, v in state.orders.items() if k != oldest}
    return evolve(state, orders=orders, earlier=_folded(state.earlier, oldest, record, tags))


def _folded(
    earlier: EarlierOrders | None, order_id: str, record: OrderRecord, rules: Tags
) -> EarlierOrders:
    """The aggregates with one more order, newer than all they hold, folded in."""
    at = record.placed_at
    assert at is not None
    if earlier is None:
        earlier = EarlierOrders(until=at, until_id=order_id)
    if not record.counts:
        return evolve(earlier, until=at, until_id=order_id)
    count = earlier.orders + 1
    gross = earlier.gross + record.total + record.discount
    discount = earlier.discount + record.discount
    tags = tags_after(earlier.tags, earlier.categories, record, count, gross, discount, rules)
    spend = dict(earlier.categories)
    for category, amount in record.categories.items():
        spend[category] = spend.get(category, 0) + amount
    last = earlier.last
    gaps = earlier.gaps
    if last is not None:
        gaps = (*gaps, (at - last).total_seconds())[-MAX_EARLIER_GAPS:]
    return evolve(
        earlier,
        until=at,
        until_id=order_id,
        orders=count,
        spend=earlier.spend + record.net_total,
        gross=gross,
        discount=discount,
        first=earlier.first or at,
        last=at,
        days=earlier.days + (last is None or utc_day(last) != utc_day(at)),
        gaps=gaps,
        categories=capped_categories(spend, MAX_CATEGORIES),
        tags=tags,
    )


def _check_currency(state: CustomerState, currency: str) -> str:
    if state.currency is not None and state.currency != currency:
        raise OrderRejected(
            "currency_mismatch",
            f"customer {state.customer_id} buys in {state.currency}, event is in {currency}",
        )
    return currency
