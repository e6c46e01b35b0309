"""The fast path of ``apply_order``: the common case, an order placed by a customer in a plain
state, decided in one flat pass.

``models.fold`` is the specification; this module gives exactly what its ``apply_order`` gives
(the same state, field by field and fields set, the same transitions with the same ids, the same
current figures and due time remembered), with a fraction of the calls and objects: the counted
orders, the figures, the scores, the segment, the tags and the transitions are worked out on
plain values, and each result model is built once instead of being derived step by step.

``apply_placed`` returns None for everything it does not cover, and ``apply_order`` then runs
the reference. Covered: an ``order_placed`` event, under a rule set whose conditions use no
field outside ``KNOWN_CONDITION_FIELDS`` (a field added later falls back until this module knows
it), for a customer without a state or with a state that

- was decided under the model's rule set and calibration (no re-evaluation pending),
- may be segmented (consent),
- holds no orders folded out of the window, and has room for one more order record,
- holds no record of this order id (no duplicate, no cancellation or refund waiting for it),
- buys in the order's currency (or has none yet).

What time does to the customer before the order (a due time at or before it) is the reference's
``due_transitions``, as in ``apply_order``; the order is then decided here.

The differential tests (``tests/unit/test_fastfold.py``) feed random streams to both and require
identical results, across each of these boundaries.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import datetime, timedelta
from typing import Any, Final

import models.fold as reference
from models.due import Shape, due_of_shape, next_due
from models.events import (
    Cause,
    Metrics,
    OrderEventT,
    OrderPlaced,
    SegmentChanged,
    TagChanged,
    Transition,
    tag_transition_name,
    transition_name,
)
from models.memo import IdentityMemo
from models.rules import Cell, SegmentFacts, SegmentRules, decide
from models.scoring import Cutoffs, Scores
from models.segment_model import SegmentModel
from models.state import (
    MAX_ORDER_CATEGORIES,
    SECONDS_PER_DAY,
    WINDOW_ORDERS,
    CustomerState,
    OrderRecord,
    typical_gap_days,
)
from models.tags import tags_of

# The condition fields this module's decision knows (it decides with ``models.rules.decide``
# from the score cell, the discount share and the average order value). A rule set that sets
# any other field of a condition is left to the reference.
KNOWN_CONDITION_FIELDS: Final = frozenset(
    {
        "r",
        "f",
        "m",
        "inactive",
        "single_order",
        "max_discount_share",
        "min_discount_share",
        "max_average_order_value",
        "min_average_order_value",
    }
)

_set = object.__setattr__
_new = object.__new__


def _build(cls: type[Any], values: dict[str, Any], fields_set: set[str]) -> Any:
    """A model of ``cls`` with these values (every field, in field order) and fields set, as
    the reference's constructors and ``evolve`` leave it."""
    model = _new(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", fields_set)
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def covers(rules: SegmentRules) -> bool:
    """Whether the fast path may decide under ``rules`` (memoised per rule set)."""
    return _plan(rules) is not None


# Per rule set: None if the fast path does not cover it, else its partial (money and share)
# bounds as ``models.rules.bounds_matched`` walks them: (segment bit, max and min discount
# share, max and min average order value).
_Bounds = tuple[int, float | None, float | None, int | None, int | None]
_PLANS: IdentityMemo[SegmentRules, tuple[_Bounds, ...] | None] = IdentityMemo(64)


def _plan(rules: SegmentRules) -> tuple[_Bounds, ...] | None:
    return _PLANS.get(rules, _make_plan)


def _make_plan(rules: SegmentRules) -> tuple[_Bounds, ...] | None:
    # an unknown field counts as used when the rule file gives it, or when it holds anything
    # but its default
    for segment in rules.segments:
        when = segment.when
        for name, info in type(when).model_fields.items():
            if name in KNOWN_CONDITION_FIELDS:
                continue
            if name in when.model_fields_set or getattr(when, name) != info.get_default(
                call_default_factory=True
            ):
                return None
    return tuple(
        (
            1 << i,
            s.when.max_discount_share,
            s.when.min_discount_share,
            s.when.max_average_order_value,
            s.when.min_average_order_value,
        )
        for i, s in enumerate(rules.segments)
        if s.when.partial
    )


def _bounds_matched(bounds: tuple[_Bounds, ...], share: float, average: int) -> int:
    """``models.rules.bounds_matched`` with the rule set's bounds at hand."""
    matched = 0
    for bit, max_share, min_share, max_average, min_average in bounds:
        if (
            (max_share is None or share <= max_share)
            and (min_share is None or share >= min_share)
            and (max_average is None or average <= max_average)
            and (min_average is None or average >= min_average)
        ):
            matched |= bit
    return matched


# A new customer's state before its first order, as ``CustomerState(shop_id=, customer_id=)``
# makes it (field order and defaults).
_FRESH: Final = dict(CustomerState(shop_id="", customer_id="").__dict__)
_FRESH_SET: Final = frozenset({"shop_id", "customer_id"})
# The fields the reference's fold of an order sets (``_record``, the new instant and revision,
# ``_resegment``), without ``segment_since`` (set on a segment change only).
_DECIDED_SET: Final = frozenset(
    {
        "currency",
        "orders",
        "as_of",
        "revision",
        "segment",
        "scores",
        "tags",
        "rule_version",
        "calibration_version",
        "prediction_version",
    }
)
_RECORD_SET: Final = frozenset({"placed_at", "total", "discount", "categories"})
_CAUSE_SET: Final = frozenset({"kind", "order_id", "refund_id"})
_SCORES_SET: Final = frozenset({"r", "f", "m"})
_METRICS_SET: Final = frozenset(Metrics.model_fields)
_SEGMENT_CHANGED_SET: Final = frozenset(
    {
        "event_id",
        "transition",
        "from_segment",
        "to_segment",
        "metrics_before",
        "metrics_after",
        "shop_id",
        "customer_id",
        "cause",
        "event_time",
        "rule_version",
        "calibration_version",
    }
)
_TAG_CHANGED_SET: Final = frozenset(
    {
        "event_id",
        "transition",
        "tag",
        "change",
        "shop_id",
        "customer_id",
        "cause",
        "event_time",
        "rule_version",
        "calibration_version",
    }
)


def apply_placed(
    state: CustomerState | None, event: OrderEventT, model: SegmentModel
) -> tuple[CustomerState, list[Transition]] | None:
    """``models.fold.apply_order`` for the cases this module covers (see the module); None:
    not covered, ask the reference."""
    if type(event) is not OrderPlaced:
        return None
    rules = model.rules
    calibration = model.calibration
    bounds = _plan(rules)
    if bounds is None:
        return None
    placed_at = event.occurred_at
    order_id = event.order_id
    fired: list[Transition] = []
    if state is None:
        if model.consent_required:
            return None
        before = _FRESH
        before_set: frozenset[str] | set[str] = _FRESH_SET
        shop_id = event.shop_id
        customer_id = event.customer_id
        old_orders: dict[str, OrderRecord] = {}
        as_of = None
        revision = 0
        before_segment = None
        before_tags: tuple[str, ...] = ()
    else:
        before = state.__dict__
        if (
            before["rule_version"] != rules.version
            or before["calibration_version"] != calibration.version
            or before["prediction_version"] is not None
            or before["earlier"] is not None
        ):
            return None
        consent = before["consent"]
        if (consent != "granted") if consent is not None else model.consent_required:
            return None
        old_orders = before["orders"]
        if order_id in old_orders or len(old_orders) >= WINDOW_ORDERS:
            return None
        currency = before["currency"]
        if currency is not None and currency != event.currency:
            return None  # the reference rejects it
        due = next_due(state, model)
        if due is not None and due <= placed_at:
            # time moves the customer first, as the reference's fold does (it changes none of
            # what was checked above: only the segment, the scores, the tags, the instant and
            # the revision)
            state, fired = reference.due_transitions(state, placed_at, model)
            before = state.__dict__
        before_set = state.__pydantic_fields_set__
        shop_id = before["shop_id"]
        customer_id = before["customer_id"]
        as_of = before["as_of"]
        revision = before["revision"]
        before_segment = before["segment"]
        before_tags = before["tags"]

    # the order's record, as ``_record`` makes it
    spend: dict[str, int] = {}
    for line in event.lines:
        category = line.category
        spend[category] = spend.get(category, 0) + line.quantity * line.unit_price
    if len(spend) > MAX_ORDER_CATEGORIES:
        return None
    total = event.total
    discount = event.discount
    record = _build(
        OrderRecord,
        {
            "placed_at": placed_at,
            "total": total,
            "discount": discount,
            "categories": spend,
            "cancelled": False,
            "refunds": {},
        },
        set(_RECORD_SET),
    )
    orders = {**old_orders, order_id: record}
    at = placed_at if as_of is None or placed_at > as_of else as_of

    currency = event.currency
    cutoffs = calibration.cutoffs
    metrics, counted = _figures(orders, currency, at, rules, cutoffs)
    values = metrics.__dict__
    recency = values["recency_days"]
    inactive_after = values["inactive_after_days"]
    count = values["order_count"]
    share = values["discount_share"]
    average = values["average_order_value"]
    r_score, f_score, m_score = values["r_score"], values["f_score"], values["m_score"]
    last = values["last_order_at"]
    scores = _build(Scores, {"r": r_score, "f": f_score, "m": m_score}, set(_SCORES_SET))
    inactive = inactive_after is not None and recency >= inactive_after
    cell = Cell(inactive, count == 1, r_score, f_score, m_score)
    segment = decide(SegmentFacts(cell, share, average), rules)
    tags = tags_of(None, counted, rules.tags)

    # the transitions, as ``_resegment`` makes them
    transitions: list[Transition] = []
    cause: Cause | None = None
    rule_version = rules.version
    calibration_version = calibration.version
    if segment != before_segment or tags != before_tags:
        stamp = at.isoformat()
        cause = _build(
            Cause,
            {"kind": "order_placed", "order_id": order_id, "refund_id": None},
            set(_CAUSE_SET),
        )
        head = f"{shop_id}\x1f{customer_id}\x1f"
        # the parts of ``models.fold.transition_id`` after the change, joined the same way
        tail = "\x1f".join(
            ("", "order_placed", order_id, "", stamp, rule_version, calibration_version)
        )
        if segment != before_segment:
            metrics_before = None
            if before_segment:
                metrics_before = _figures(old_orders, before["currency"], at, rules, cutoffs)[0]
            transitions.append(
                _build(
                    SegmentChanged,
                    {
                        "event_id": reference.uuid5_text(f"{head}{before_segment}>{segment}{tail}"),
                        "shop_id": shop_id,
                        "customer_id": customer_id,
                        "transition": transition_name(segment),
                        "cause": cause,
                        "event_time": at,
                        "rule_version": rule_version,
                        "calibration_version": calibration_version,
                        "type": "segment_changed",
                        "from_segment": before_segment,
                        "to_segment": segment,
                        "metrics_before": metrics_before,
                        "metrics_after": metrics,
                    },
                    set(_SEGMENT_CHANGED_SET),
                )
            )
        if tags != before_tags:
            for change, changed in (
                ("removed", sorted(set(before_tags) - set(tags))),
                ("added", sorted(set(tags) - set(before_tags))),
            ):
                for tag in changed:
                    transitions.append(
                        _build(
                            TagChanged,
                            {
                                "event_id": reference.uuid5_text(f"{head}{change}:{tag}{tail}"),
                                "shop_id": shop_id,
                                "customer_id": customer_id,
                                "transition": tag_transition_name(change),
                                "cause": cause,
                                "event_time": at,
                                "rule_version": rule_version,
                                "calibration_version": calibration_version,
                                "type": "tag_changed",
                                "tag": tag,
                                "change": change,
                            },
                            set(_TAG_CHANGED_SET),
                        )
                    )

    values = {
        **before,
        "shop_id": shop_id,
        "customer_id": customer_id,
        "currency": currency,
        "orders": orders,
        "as_of": at,
        "revision": revision + 1,
        "segment": segment,
        "scores": scores,
        "tags": tags,
        "rule_version": rule_version,
        "calibration_version": calibration_version,
        "prediction_version": None,  # rules that ask predictions are not covered here
    }
    fields_set = before_set | _DECIDED_SET
    if segment != before_segment:
        values["segment_since"] = at
        fields_set = fields_set | {"segment_since"}
    decided: CustomerState = _build(CustomerState, values, set(fields_set))
    model._current.put(decided, metrics)
    due = None
    if segment is not None and inactive_after is not None:
        due = _due(
            model,
            segment,
            at,
            values["segment_since"],
            last,
            inactive_after,
            count == 1,
            f_score,
            m_score,
            _bounds_matched(bounds, share, average),
        )
    model._due.put(decided, due)
    return decided, fired + transitions


def _due(
    model: SegmentModel,
    segment: str,
    as_of: datetime,
    segment_since: datetime | None,
    last: datetime,
    inactive_after: float,
    single: bool,
    f: int,
    m: int,
    matched: int,
) -> datetime | None:
    """``models.due.next_due`` of a state the fast path decided, from its figures: the same
    shape, the same remembered offsets."""
    dwell = model.rules.scoring.min_dwell_days
    dwell_end = None
    if dwell and segment_since is not None:
        dwell_end = segment_since + timedelta(days=dwell)
        if dwell_end <= as_of:
            dwell_end = None
    shape: Shape = (
        segment,
        as_of - last,
        None if dwell_end is None else dwell_end - last,
        inactive_after,
        single,
        f,
        m,
        matched,
    )
    return due_of_shape(model, last, shape)


def _figures(
    orders: dict[str, OrderRecord],
    currency: str | None,
    at: datetime,
    rules: SegmentRules,
    cutoffs: Cutoffs,
) -> tuple[Metrics, list[OrderRecord]]:
    """``compute_metrics`` (scored fresh) of a state with these orders and no folded ones, as of
    ``at``; and the orders that count, oldest first (``counted_orders``)."""
    items: list[tuple[datetime, str, OrderRecord]] = []
    for oid, r in orders.items():
        values = r.__dict__
        when = values["placed_at"]
        if when is None or values["cancelled"]:
            continue
        refunds = values["refunds"]
        if refunds and values["total"] and sum(refunds.values()) >= values["total"]:
            continue
        items.append((when, oid, r))
    items.sort()
    count = len(items)
    spend = gross = discount = 0
    gaps: list[float] = []
    previous: datetime | None = None
    for when, _, r in items:
        values = r.__dict__
        total = values["total"]
        refunds = values["refunds"]
        spend += max(total - sum(refunds.values()), 0) if refunds else total
        gross += total + values["discount"]
        discount += values["discount"]
        if previous is not None:
            gaps.append((when - previous).total_seconds())
        previous = when
    gaps.sort()
    typical_gap = typical_gap_days(tuple(gaps), rules.inactivity.min_gap_days)
    threshold = rules.inactivity.threshold_days(count, typical_gap)
    first = last = recency = r_score = f_score = m_score = None
    if count:
        first = items[0][0]
        last = items[-1][0]
        recency = round((at - last).total_seconds() / SECONDS_PER_DAY, 4)
        r_score = 5 - bisect_right(cutoffs.recency_days, recency)
        f_score = 1 + bisect_left(cutoffs.frequency, count)
        m_score = 1 + bisect_left(cutoffs.monetary, spend)
    metrics: Metrics = _build(
        Metrics,
        {
            "currency": currency,
            "order_count": count,
            "total_spend": spend,
            "average_order_value": spend // count if count else 0,
            "discount_share": round(discount / gross, 4) if gross else 0.0,
            "first_order_at": first,
            "last_order_at": last,
            "recency_days": recency,
            "typical_gap_days": typical_gap,
            "inactive_after_days": None if threshold is None else round(threshold, 4),
            "r_score": r_score,
            "f_score": f_score,
            "m_score": m_score,
        },
        set(_METRICS_SET),
    )
    return metrics, [r for _, _, r in items]
