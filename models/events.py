"""Events on the wire: the order events webshops publish and the transitions we emit.

Money is always an integer amount in the currency's minor units (cents for EUR): floats are
rejected, so sums are exact. Ids and names are printed for marketers and operators, so they may
not hold control characters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models.currency import is_known_currency

# One order of more than 100 million major units (10^10 minor units) is not a webshop order.
MAX_AMOUNT: Final = 10**10
MAX_QUANTITY: Final = 100_000
MAX_LINES: Final = 1_000
EARLIEST_EVENT: Final = datetime(1990, 1, 1, tzinfo=UTC)
# How far ahead of the receiving worker's clock an event may be stamped (clock skew).
MAX_CLOCK_SKEW: Final = timedelta(days=1)

# The error type of an id or a name with a control character (the decoder's ``invalid_id``).
CONTROL_CHARACTER: Final = "control_character"
# Characters that change what a terminal or a reader shows: the C0 and C1 controls (escape
# sequences, line breaks, backspace, DEL), the Unicode line and paragraph separators, and the
# bidirectional controls that reorder the text around them.
CONTROL_CHARACTERS: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def control_character(text: str) -> str | None:
    """The first control character in ``text`` (see ``CONTROL_CHARACTERS``), if any."""
    found = CONTROL_CHARACTERS.search(text)
    return found.group() if found else None


# What pydantic's ``strip_whitespace`` strips (Unicode White_Space).
_WHITE_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _printable(value: Any, handler: ValidatorFunctionWrapHandler) -> str:
    """The text as its constraints make it (whitespace around it stripped), refused for a
    control character in it, whichever other constraint it also breaks."""
    try:
        text: str = handler(value)
    except ValidationError:
        if isinstance(value, str):
            _no_control_character(value.strip(_WHITE_SPACE))
        raise
    return _no_control_character(text)


def _no_control_character(text: str) -> str:
    found = control_character(text)
    if found is not None:
        raise PydanticCustomError(
            CONTROL_CHARACTER,
            "contains the control character U+{code}",
            {"code": f"{ord(found):04X}"},
        )
    return text


Printable = WrapValidator(_printable)
Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, strip_whitespace=True, pattern=r"^\S+$"),
    Printable,
]
# Shop ids are part of table and cache keys (``<shop>/<customer>``, ``...:<shop>:<customer>``),
# so they may not contain the separators.
ShopId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, strip_whitespace=True, pattern=r"^[^\s/:]+$"),
    Printable,
]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True), Printable
]
Amount = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]
PositiveAmount = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

DEFAULT_SHOP: Final = "default"


class _Event(BaseModel):
    # Unknown fields (names, e-mail addresses, ...) are dropped at the edge, never stored.
    model_config = ConfigDict(frozen=True, extra="ignore")


class OrderLine(_Event):
    """One line of an order: what was bought, in which category, at which unit price."""

    sku: Name
    category: Name
    quantity: Annotated[StrictInt, Field(gt=0, le=MAX_QUANTITY)]
    unit_price: Amount


class _CustomerEvent(_Event):
    customer_id: Id
    shop_id: ShopId = DEFAULT_SHOP
    occurred_at: AwareDatetime

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        if value < EARLIEST_EVENT:
            raise ValueError(f"occurred_at {value.isoformat()} is before {EARLIEST_EVENT.year}")
        received_at = (info.context or {}).get("received_at")
        if received_at is not None and value > received_at + MAX_CLOCK_SKEW:
            raise ValueError(
                f"occurred_at {value.isoformat()} is more than {MAX_CLOCK_SKEW} in the future"
            )
        return value.astimezone(UTC)


class _OrderEvent(_CustomerEvent):
    order_id: Id


class _WithCurrency(_OrderEvent):
    currency: Currency

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if not is_known_currency(value):
            raise ValueError(f"unknown currency {value!r} (expected an ISO 4217 code)")
        return value


class OrderPlaced(_WithCurrency):
    """A customer placed an order. ``total`` is what they paid, ``discount`` what they saved."""

    type: Literal["order_placed"] = "order_placed"
    total: Amount
    discount: Amount = 0
    lines: Annotated[tuple[OrderLine, ...], Field(max_length=MAX_LINES)] = ()


class OrderCancelled(_OrderEvent):
    """The order was cancelled: its whole contribution is reversed."""

    type: Literal["order_cancelled"] = "order_cancelled"


class OrderRefunded(_WithCurrency):
    """Part or all of an order was refunded; ``total`` is the amount refunded."""

    type: Literal["order_refunded"] = "order_refunded"
    total: PositiveAmount
    refund_id: Id | None = None

    @property
    def refund_key(self) -> str:
        """Identifies this refund among the order's refunds, so a redelivery counts once."""
        return self.refund_id or self.occurred_at.isoformat()


OrderEventT = OrderPlaced | OrderCancelled | OrderRefunded
OrderEvent = Annotated[OrderPlaced | OrderCancelled | OrderRefunded, Field(discriminator="type")]
ORDER_EVENT: Final[TypeAdapter[OrderPlaced | OrderCancelled | OrderRefunded]] = TypeAdapter(
    OrderEvent
)


class ConsentChanged(_CustomerEvent):
    """The customer granted or withdrew consent to being segmented for marketing."""

    type: Literal["consent_granted", "consent_withdrawn"]


class ErasureRequested(_CustomerEvent):
    """Erase everything stored about the customer (right to erasure)."""

    type: Literal["erasure_requested"] = "erasure_requested"
    request_id: Id


CONSENT_EVENT: Final[TypeAdapter[ConsentChanged]] = TypeAdapter(ConsentChanged)
ERASURE_EVENT: Final[TypeAdapter[ErasureRequested]] = TypeAdapter(ErasureRequested)


class ErasureCompleted(_Event):
    """The receipt of an erasure: what was deleted. ``cache_deletion_pending``: Redis could not
    be reached, its copy goes when it comes back (the pending removal is stored, so a crash
    meanwhile does not lose it). ``partition``: the erasure topic's partition the request was
    processed on; a request sent to every partition (``segmenter forget``) gets one receipt
    from each, and the customer's state is found on one of them at most."""

    type: Literal["erasure_completed"] = "erasure_completed"
    request_id: str
    shop_id: str
    requested_at: datetime
    completed_at: datetime
    state_deleted: bool
    cache_deleted: bool
    cache_deletion_pending: bool
    partition: int | None = None


def erasure_receipt(
    event: ErasureRequested,
    *,
    state_deleted: bool,
    cache_deleted: bool,
    completed_at: datetime,
    partition: int | None = None,
) -> ErasureCompleted:
    """The receipt of ``event``: whether the customer's state was there to delete, and whether
    the cache's copy is gone already (else its deletion is pending)."""
    return ErasureCompleted(
        request_id=event.request_id,
        shop_id=event.shop_id,
        requested_at=event.occurred_at,
        completed_at=completed_at,
        state_deleted=state_deleted,
        cache_deleted=cache_deleted,
        cache_deletion_pending=not cache_deleted,
        partition=partition,
    )


TickKind = Literal["due", "reevaluate"]


class ClockTick(_Event):
    """A record of the clock topic, for one customer (``key``: the state's key): ``due``, its
    due time has passed by ``now``; ``reevaluate``, re-decide it under a new rule set or
    calibration (no ``now``: the worker takes its own)."""

    kind: TickKind = "due"  # ticks without a kind are due ticks
    key: str
    now: datetime | None = None

    @field_validator("now", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        # read as the clock wrote it (datetime.isoformat): the same instant and time zone
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        if value is not None and not isinstance(value, datetime):
            raise ValueError(f"expected an ISO 8601 instant, got {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _due_has_an_instant(self) -> ClockTick:
        if self.kind == "due" and self.now is None:
            raise ValueError("a due tick needs the instant it is due by (now)")
        return self


class Metrics(BaseModel):
    """The figures a segment decision is based on, as of one instant.

    ``recency_days``, ``order_count`` and ``total_spend`` are the R, F and M values;
    ``r_score``, ``f_score`` and ``m_score`` their 1..5 scores under the calibration in force.
    """

    model_config = ConfigDict(frozen=True)

    currency: str | None
    order_count: int
    total_spend: int
    average_order_value: int
    discount_share: float
    first_order_at: datetime | None
    last_order_at: datetime | None
    recency_days: float | None
    typical_gap_days: float | None
    inactive_after_days: float | None
    r_score: int | None = None
    f_score: int | None = None
    m_score: int | None = None


CauseKind = Literal[
    "order_placed",
    "order_cancelled",
    "order_refunded",
    "time",
    "recalibration",
    "rule_change",
    "model_refit",
    "consent_granted",
    "consent_withdrawn",
    "erasure",
]


class Cause(BaseModel):
    """Why a transition happened: an order event (by order id), the passing of time, a new
    calibration of the scores, or a new rule set."""

    model_config = ConfigDict(frozen=True)

    kind: CauseKind
    order_id: str | None = None
    refund_id: str | None = None


class _Transition(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    shop_id: str
    customer_id: str
    transition: str
    cause: Cause
    event_time: datetime
    rule_version: str
    calibration_version: str


class SegmentChanged(_Transition):
    """A customer moved from one segment to another. ``event_id`` is stable across replays."""

    type: Literal["segment_changed"] = "segment_changed"
    from_segment: str | None
    to_segment: str | None
    metrics_before: Metrics | None
    metrics_after: Metrics


class TagChanged(_Transition):
    """A tag beside the segment was added or removed (``prefers_shoes``, ``discount_seeker``)."""

    type: Literal["tag_changed"] = "tag_changed"
    tag: str
    change: Literal["added", "removed"]


class ChurnRiskChanged(_Transition):
    """The customer's P(alive) under the shop's prediction model fell to or below the shop's
    churn threshold (``became_likely_churned``: by time, at the exact crossing instant, or by a
    refit), or rose above it again (``no_longer_likely_churned``: an order, a refit)."""

    type: Literal["churn_risk_changed"] = "churn_risk_changed"
    move: Literal["became_likely_churned", "no_longer_likely_churned"]
    p_alive: float
    threshold: float
    model_version: str


Transition = SegmentChanged | TagChanged | ChurnRiskChanged


# The transition names of churn-risk moves (``ChurnRiskChanged``): a marketing topic each.
CHURN_TRANSITIONS: tuple[str, ...] = (
    "customer.became_likely_churned",
    "customer.no_longer_likely_churned",
)


def transition_name(to_segment: str | None) -> str:
    """The marketing-facing name of a move into ``to_segment``: ``customer.became_inactive``."""
    return f"customer.became_{to_segment}" if to_segment else "customer.left_all_segments"


def tag_transition_name(change: str) -> str:
    """``customer.tag_added`` or ``customer.tag_removed``."""
    return f"customer.tag_{change}"


def transition_names(segments: tuple[str, ...]) -> list[str]:
    """Every transition name a rule set can produce: one marketing topic each."""
    return [
        *(transition_name(s) for s in segments),
        transition_name(None),
        tag_transition_name("added"),
        tag_transition_name("removed"),
        *CHURN_TRANSITIONS,
    ]


def order_event_json_schema() -> dict[str, Any]:
    """The published JSON Schema of the ``orders`` topic."""
    return ORDER_EVENT.json_schema()
