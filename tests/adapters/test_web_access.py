"""The worker's HTTP surface: who may pause and resume it, the broker check /readyz caches, and
Faust's own views kept off."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from config.rules import load_rules
from config.settings import Settings
from streams.app import create_app
from streams.web import CachedCheck
from streams.web_access import admin_refusal

TOKEN = SecretStr("s3cret-admin-token-0123")
OWN = {"Host": "127.0.0.1:6066"}
BEARER = {"Authorization": "Bearer s3cret-admin-token-0123"}


def _refusal(token: SecretStr | None, **headers: str) -> tuple[int, str] | None:
    refusal = admin_refusal(token, CIMultiDict(headers))
    return None if refusal is None else (refusal.status, refusal.error)


def test_without_a_configured_token_the_endpoints_are_off() -> None:
    assert _refusal(None, **OWN, **BEARER) == (
        403,
        "disabled: set SEGMENTER_ADMIN_TOKEN to allow this endpoint",
    )


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token-0123456789",
        "Bearer s3cret-admin-token-012",  # a prefix
        "Basic s3cret-admin-token-0123",
        "s3cret-admin-token-0123",
        "Bearer \udcff\udcfe",  # bytes that are not UTF-8, as aiohttp hands them over
    ],
)
def test_a_missing_or_wrong_token_is_unauthorised(authorization: str | None) -> None:
    headers = {**OWN, **({"Authorization": authorization} if authorization is not None else {})}
    refusal = admin_refusal(TOKEN, CIMultiDict(headers))
    assert refusal is not None
    assert refusal.status == 401
    assert "Authorization: Bearer" in refusal.error
    assert refusal.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers",
    [
        {**BEARER, **OWN},
        {"authorization": "bearer s3cret-admin-token-0123", **OWN},
        {**BEARER},  # no Host, no Origin: curl, a script
        {**BEARER, **OWN, "Origin": "http://127.0.0.1:6066"},
        {**BEARER, "Host": "worker.example:80", "Origin": "http://worker.example"},
        {**BEARER, "Host": "Worker.Example", "Origin": "https://worker.example:443"},
        {**BEARER, **OWN, "Sec-Fetch-Site": "same-origin"},
        {**BEARER, **OWN, "Sec-Fetch-Site": "none"},
    ],
)
def test_the_token_from_the_workers_own_origin_is_allowed(headers: dict[str, str]) -> None:
    assert admin_refusal(TOKEN, CIMultiDict(headers)) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:3000"},  # another service on the same host
        {"Origin": "null"},  # a sandboxed page, a file
        {"Origin": "http://[::1"},  # unparseable
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_cross_site_request_is_refused_even_with_the_token(headers: dict[str, str]) -> None:
    assert _refusal(TOKEN, **OWN, **BEARER, **headers) == (403, "cross-site request refused")


async def test_the_broker_check_is_reused_for_its_time_to_live() -> None:
    now = [0.0]
    answers = [True, False]
    calls = []

    async def check() -> bool:
        calls.append(now[0])
        await asyncio.sleep(0)
        return answers[len(calls) - 1]

    cached = CachedCheck(check, ttl=5.0, clock=lambda: now[0])
    assert await asyncio.gather(cached(), cached(), cached()) == [True, True, True]
    now[0] = 4.9
    assert await cached() is True
    now[0] = 5.0
    assert await cached() is False
    assert calls == [0.0, 5.0]


def test_fausts_table_router_and_statistics_views_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust's own environment variables do not turn them back on.
    monkeypatch.setenv("APP_WEB_TABLES_ENABLED", "true")
    monkeypatch.setenv("APP_WEB_ROUTER_ENABLED", "true")
    conf = create_app(Settings(web_port=0), load_rules(), 2, {}).app.conf
    assert not conf.web_tables_enabled
    assert not conf.web_router_enabled
    assert not conf.web_stats_enabled
    assert not conf.web_graph_enabled
    assert not conf.web_metrics_enabled
