"""Every bytes <-> model conversion of the product, in one place (orjson + pydantic, never pickle).

Incoming order events fail with ``DecodeError`` carrying a short machine-readable reason (used
as the dead-letter header and metric label) and a human-readable message.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final, NamedTuple, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

from models.due import DUE_VERSION
from models.events import (
    CONSENT_EVENT,
    CONTROL_CHARACTER,
    ERASURE_EVENT,
    ORDER_EVENT,
    ClockTick,
    ConsentChanged,
    ErasureCompleted,
    ErasureRequested,
    OrderEventT,
    Transition,
)
from models.predictions import PredictionModel
from models.scoring import Calibration
from models.state import SCHEMA_VERSION, CustomerState, state_key

MAX_ORDER_BYTES: Final = 256 * 1024
ORDER_TYPES: Final = frozenset({"order_placed", "order_cancelled", "order_refunded"})
CONSENT_TYPES: Final = frozenset({"consent_granted", "consent_withdrawn"})
ERASURE_TYPES: Final = frozenset({"erasure_requested"})
T = TypeVar("T")


class DecodeError(ValueError):
    """Bytes that are not a valid order event; ``reason`` is a short label (``malformed_json``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoredState(NamedTuple):
    """A table value: the customer's state and the partition it lives in."""

    partition: int
    state: CustomerState


def decode_order(key: bytes | None, value: bytes | None, received_at: datetime) -> OrderEventT:
    """Parse and validate one record of the orders topic."""
    return _decode(key, value, received_at, ORDER_EVENT, ORDER_TYPES)


def decode_consent(key: bytes | None, value: bytes | None, received_at: datetime) -> ConsentChanged:
    """Parse and validate one record of the consent topic."""
    return _decode(key, value, received_at, CONSENT_EVENT, CONSENT_TYPES)


def decode_erasure(
    key: bytes | None, value: bytes | None, received_at: datetime
) -> ErasureRequested:
    """Parse and validate one record of the erasure topic."""
    return _decode(key, value, received_at, ERASURE_EVENT, ERASURE_TYPES)


def _decode(
    key: bytes | None,
    value: bytes | None,
    received_at: datetime,
    adapter: TypeAdapter[T],
    types: frozenset[str],
) -> T:
    if value is not None and len(value) > MAX_ORDER_BYTES:
        raise DecodeError(
            "too_large", f"order event of {len(value)} bytes exceeds {MAX_ORDER_BYTES} bytes"
        )
    raw = _json_object(value)
    kind = raw.get("type", next(iter(types)) if len(types) == 1 else None)
    if kind not in types:
        raise DecodeError(
            "unknown_event_type",
            f"unknown event type {kind!r}; expected one of {sorted(types)}",
        )
    try:
        event = adapter.validate_python(raw, context={"received_at": received_at})
    except ValidationError as exc:
        raise DecodeError(_reason(exc), _describe(exc)) from exc
    _check_key(key, event.customer_id)  # type: ignore[attr-defined]
    return event


def _check_key(key: bytes | None, customer_id: str) -> None:
    # The record key decides the partition, and so which worker holds the customer's state:
    # a record keyed by anything else would split the customer's state across partitions.
    if key is None:
        raise DecodeError("missing_key", "orders must be keyed by customer_id; record has no key")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_key", f"record key is not UTF-8: {exc}") from exc
    if text != customer_id:
        raise DecodeError(
            "key_mismatch", f"record key {text[:64]!r} differs from customer_id {customer_id!r}"
        )


def _reason(exc: ValidationError) -> str:
    """``invalid_id`` if an id or a name holds a control character, else ``schema_violation``."""
    if any(err["type"] == CONTROL_CHARACTER for err in exc.errors()):
        return "invalid_id"
    return "schema_violation"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(p) for p in err["loc"] if not isinstance(p, str) or p) or "(event)"
        parts.append(f"{location}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def encode_stored(
    partition: int,
    state: CustomerState,
    due: datetime | None = None,
    churn: datetime | None = None,
    judged: Judged | None = None,
) -> bytes:
    """A table value: the partition, the customer's next due time as computed when the state
    was written (``d``: lets a restart rebuild the due index without decoding every state;
    ``dv``: the version of ``next_due`` that computed it), the churn-risk crossing still ahead
    (``c``, only with one: ``models.churn``; kept apart from ``d``, which is the fold's own),
    the prediction model the churn risk was judged under and the verdict (``m`` and ``lc``,
    only for a shop with a model: a refit the worker did not get to is found from them) and the
    state, without the fields that hold their default (compact on disk)."""
    # bytes throughout (pydantic serialises straight to bytes): the state, often kilobytes, is
    # neither decoded to text nor encoded again; never "{}": the ids have no default
    body = state.__pydantic_serializer__.to_json(state, exclude_defaults=True)
    # an ISO 8601 instant has nothing to escape in JSON
    stamp = b'"%s"' % due.isoformat().encode() if due else b"null"
    crossing = b',"c":"%s"' % churn.isoformat().encode() if churn else b""
    if judged is not None:
        crossing += b',"m":%s,"lc":%s' % (
            orjson.dumps(judged.model_version),
            b"true" if judged.likely_churned else b"false",
        )
    return b'{"p":%d,"d":%s,"dv":%d%s,"s":{"schema_version":%d,%s}' % (
        partition,
        stamp,
        DUE_VERSION,
        crossing,
        SCHEMA_VERSION,
        body[1:],
    )


class Judged(NamedTuple):
    """The churn risk of a stored state as judged when it was written: under which prediction
    model, and whether the customer was likely churned at the state's latest instant."""

    model_version: str
    likely_churned: bool


class StoredHeader(NamedTuple):
    """What the due index needs of a table value, read without validating the whole state
    (``due``: the earlier of the fold's due time and the churn-risk crossing)."""

    partition: int
    key: str
    shop_id: str
    due: datetime | None
    as_of: datetime | None
    rule_version: str | None
    calibration_version: str | None
    judged: Judged | None = None


def decode_header(value: bytes) -> StoredHeader | None:
    """The header of a table value, or None if the value has none (written before the due
    time was stored: decode it with ``decode_stored``)."""
    raw = orjson.loads(value)
    if "d" not in raw:
        return None
    state = raw["s"]
    if state.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported state schema_version {state.get('schema_version')!r}")
    due, churn, as_of = raw["d"], raw.get("c"), state.get("as_of")
    shop_id = state["shop_id"]
    stamps = [datetime.fromisoformat(d) for d in (due, churn) if d]
    return StoredHeader(
        partition=raw["p"],
        key=state_key(shop_id, state["customer_id"]),
        shop_id=shop_id,
        due=min(stamps) if stamps else None,
        as_of=datetime.fromisoformat(as_of) if as_of else None,
        rule_version=state.get("rule_version"),
        calibration_version=state.get("calibration_version"),
        judged=Judged(raw["m"], bool(raw.get("lc"))) if isinstance(raw.get("m"), str) else None,
    )


def decode_stored(value: bytes) -> StoredState:
    """Decode a table value; a state written by a newer schema is refused loudly."""
    stored = decode_stored_due(value)
    return StoredState(stored.partition, stored.state)


class StoredDue(NamedTuple):
    """A table value in full: the state, its partition and the due time stored with it."""

    partition: int
    state: CustomerState
    due: datetime | None
    due_known: bool  # False: written before the due time was stored, or by another next_due


# The head of a table value as ``encode_stored`` writes it: partition, due time, its version and
# the start of the state (its schema version first).
_STORED_HEAD: Final = re.compile(
    rb'\{"p":(0|[1-9]\d*),"d":(null|"[^"\\]*"),"dv":(0|[1-9]\d*),"s":'
    rb'(?=\{"schema_version":%d,)' % SCHEMA_VERSION
)


def decode_stored_due(value: bytes) -> StoredDue:
    """``decode_stored`` and the due time stored with the state."""
    head = _STORED_HEAD.match(value)
    if head is not None and value.endswith(b"}"):
        # as encode_stored writes it: the state validated straight from its own bytes (no
        # dictionary of it first); anything else is read and refused as below
        try:
            state = CustomerState.model_validate_json(value[head.end() : -1])
        except ValidationError:
            pass
        else:
            partition, due, version = head.groups()
            instant = "" if due == b"null" else due[1:-1].decode()
            return StoredDue(
                int(partition),
                state,
                datetime.fromisoformat(instant) if instant else None,
                int(version) == DUE_VERSION,
            )
    raw = orjson.loads(value)
    state = raw["s"]
    if state.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported state schema_version {state.get('schema_version')!r}")
    due = raw.get("d")
    return StoredDue(
        raw["p"],
        CustomerState.model_validate(state),
        datetime.fromisoformat(due) if due else None,
        "d" in raw and raw.get("dv") == DUE_VERSION,
    )


def encode_transition(transition: Transition, emitted_at: datetime, backfill: bool) -> bytes:
    """The transition's JSON, then ``emitted_at`` and ``backfill`` (serialised by pydantic
    straight to bytes: no dictionary of the figures per transition)."""
    body = transition.__pydantic_serializer__.to_json(transition)
    stamp = orjson.dumps(emitted_at.isoformat())
    return b'%s,"emitted_at":%s,"backfill":%s}' % (
        body[:-1],
        stamp,
        b"true" if backfill else b"false",
    )


def encode_receipt(receipt: ErasureCompleted) -> bytes:
    """An erasure receipt for the receipts topic (instants as ``datetime.isoformat``)."""
    return orjson.dumps(
        {
            "type": receipt.type,
            "request_id": receipt.request_id,
            "shop_id": receipt.shop_id,
            "requested_at": receipt.requested_at.isoformat(),
            "completed_at": receipt.completed_at.isoformat(),
            "state_deleted": receipt.state_deleted,
            "cache_deleted": receipt.cache_deleted,
            "cache_deletion_pending": receipt.cache_deletion_pending,
            "partition": receipt.partition,
        }
    )


def encode_tick(tick: ClockTick) -> bytes:
    """A record of the clock topic (``now`` as ``datetime.isoformat``)."""
    now = tick.now.isoformat() if tick.now else None
    return orjson.dumps({"kind": tick.kind, "key": tick.key, "now": now})


def decode_tick(value: bytes | None) -> ClockTick:
    """Parse and validate one record of the clock topic (a tick without a kind is a due
    tick, as written before there were other kinds)."""
    raw = _json_object(value)
    try:
        return ClockTick.model_validate(raw)
    except ValidationError as exc:
        raise DecodeError("schema_violation", _describe(exc)) from exc


def _json_object(value: bytes | None) -> dict[str, Any]:
    """The record's value as a JSON object."""
    if value is None:
        raise DecodeError("empty_value", "record has no value")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("malformed_json", f"not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DecodeError("malformed_json", f"expected a JSON object, got {type(raw).__name__}")
    return raw


def encode_calibration(calibration: Calibration) -> bytes:
    return orjson.dumps(calibration.model_dump(mode="json"))


def decode_calibration(value: bytes) -> Calibration:
    return Calibration.model_validate_json(value)


def encode_prediction_model(model: PredictionModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def decode_prediction_model(value: bytes) -> PredictionModel:
    return PredictionModel.model_validate_json(value)


def decode_transition(value: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(value)
    return decoded


def dumps(obj: Any) -> bytes:
    """JSON for CLI output and internal messages."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
