"""Privacy rules of the core: who may be segmented, what an erased customer's events do, and keyed
pseudonyms for identifiers."""

from __future__ import annotations

import hashlib
import hmac

from models.state import CustomerState


def consented(state: CustomerState, consent_required: bool) -> bool:
    """Whether the customer may be segmented: consent granted, or no record and the policy does
    not require one."""
    if state.consent is not None:
        return state.consent == "granted"
    return not consent_required


def skipped_after_erasure(state: CustomerState | None, erased: bool, event_type: str) -> bool:
    """Whether an event of ``event_type`` (an order event, or a consent decision) for a customer
    without a state is skipped because the customer was erased (``erased``: an erasure marker
    is kept for them). An erased customer's state starts afresh only when consent is granted
    again: their orders and a withdrawal are not stored; a grant always is. A customer with a
    state has come back by consent already."""
    return erased and state is None and event_type != "consent_granted"


def pseudonym(secret: bytes, shop_id: str, customer_id: str) -> str:
    """A keyed hash (HMAC-SHA256) of a customer id: stable, not reversible without the secret.
    The webshop computes the same value to look a customer up."""
    digest = hmac.new(secret, f"{shop_id}/{customer_id}".encode(), hashlib.sha256).hexdigest()
    return f"p-{digest[:32]}"


def erasure_marker(secret: bytes | None, shop_id: str, customer_id: str) -> str:
    """The key under which an erasure is remembered: a hash, never the id itself."""
    data = f"erased/{shop_id}/{customer_id}".encode()
    if secret:
        return hmac.new(secret, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()
