"""Who may call the worker's mutating endpoints (``POST /pause``, ``POST /resume``): a client
that sends the admin token (``Authorization: Bearer <token>``) and is not a page of another
site. Without a token configured they are off."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import SecretStr

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its HTTP status, a message and the headers to send."""

    status: int
    error: str
    headers: dict[str, str] = field(default_factory=dict)


def admin_refusal(token: SecretStr | None, headers: Mapping[str, str]) -> Refusal | None:
    """None if a request with ``headers`` (case-insensitive, as aiohttp gives them) may change
    the worker's state; else why not."""
    if token is None:
        return Refusal(403, "disabled: set SEGMENTER_ADMIN_TOKEN to allow this endpoint")
    if _cross_site(headers):
        # A page of another site can make a browser POST here; it may not, token or not.
        return Refusal(403, "cross-site request refused")
    if not _bearer_matches(headers.get("Authorization"), token):
        return Refusal(
            401,
            "send the admin token: Authorization: Bearer <SEGMENTER_ADMIN_TOKEN>",
            {"WWW-Authenticate": 'Bearer realm="segmenter"'},
        )
    return None


def _bearer_matches(authorization: str | None, token: SecretStr) -> bool:
    scheme, _, given = (authorization or "").strip().partition(" ")
    expected = token.get_secret_value().encode()
    # compared in constant time, whatever was sent
    # aiohttp keeps bytes that are not UTF-8 as surrogates: compared as the bytes they were
    matches = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected)
    return scheme.lower() == "bearer" and matches


def _cross_site(headers: Mapping[str, str]) -> bool:
    """Whether a browser says the request comes from another site or origin than the worker's
    own (``Sec-Fetch-Site``; ``Origin`` against the ``Host`` it was sent to). Clients that are
    not browsers (curl, scripts) send neither."""
    if headers.get("Sec-Fetch-Site", "").strip().lower() in ("cross-site", "same-site"):
        return True
    origin = headers.get("Origin")
    if origin is None:
        return False
    sender = _origin_authority(origin)
    return sender is None or sender != _host_authority(headers.get("Host", ""), origin)


def _origin_authority(origin: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:  # "null", a file: page, ...
        return None
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _host_authority(host: str, origin: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{host.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    scheme = urlsplit(origin.strip()).scheme
    return parts.hostname, port or DEFAULT_PORTS.get(scheme, 80)
