"""The insights API's answers to query parameters and paths it must refuse or survive, before it
reads Redis (the app is called as ASGI, its Redis address unused: nothing listens there)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import date
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from fastapi import FastAPI

from config.rules import load_rules
from config.settings import Settings
from streams.insights.api import _attachment, _period, create_api
from tests.conftest import free_port

TOKEN = "params-test-token-0123456789"


class _Started(Exception):
    """The response's start reached the client (its body would read Redis)."""


@pytest.fixture
def api() -> FastAPI:
    settings = Settings(
        api_token=TOKEN,  # type: ignore[arg-type]
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # type: ignore[arg-type]
    )
    return create_api(settings, load_rules())


def _get(api: FastAPI, path: str, query: str = "") -> tuple[int, dict[str, str], Any]:
    """GET ``path`` (percent-encoded, as on the wire): status, headers, and the JSON body when
    the response is complete before its body would be read from Redis."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []

    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(requests, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start" and "csv" in query:
            raise _Started

    async def call() -> None:
        with contextlib.suppress(_Started):
            await api(scope, receive, send)

    asyncio.run(call())
    start = sent[0]
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, orjson.loads(body) if body else None


def test_a_period_ending_in_the_first_days_of_year_one_starts_on_its_first_day() -> None:
    # The default start (29 days before the end) lay before 0001-01-01: OverflowError, a 500.
    period = _period(None, date(1, 1, 10))
    assert (period.start, period.end) == (date.min, date(1, 1, 10))
    assert _period(date(1, 1, 2), date(1, 1, 3)).start == date(1, 1, 2)


@pytest.mark.parametrize("path", ["history", "flows", "performance"])
def test_a_period_that_starts_after_it_ends_is_refused(api: FastAPI, path: str) -> None:
    status, _, body = _get(api, f"/api/shops/s/{path}", "start=2025-03-02&end=2025-03-01")
    assert status == 422
    assert body["detail"] == "the period starts after it ends (2025-03-02 > 2025-03-01)"


@pytest.mark.parametrize("month", ["2025-13", "2025-00", "2025-1", "25-01", "2025-01x"])
def test_retention_refuses_a_month_that_is_none(api: FastAPI, month: str) -> None:
    # 2025-13 passed the pattern and was answered with figures of a month that does not exist.
    status, _, body = _get(api, "/api/shops/s/retention", f"month={month}")
    assert status == 422
    assert body["detail"][0]["loc"] == ["query", "month", 0]


@pytest.mark.parametrize(
    ("shop", "plain"),
    [
        ("web", "web-loyal.csv"),
        ("caf%C3%A9%F0%9F%99%82", "caf__-loyal.csv"),
        ("a%22b", "a_b-loyal.csv"),
        ("a%0D%0ASet-Cookie%3A%20x%3D1", "a__Set-Cookie__x_1-loyal.csv"),
    ],
)
def test_the_csv_download_names_a_file_whatever_the_shop_id(
    api: FastAPI, shop: str, plain: str
) -> None:
    # A shop id outside Latin-1 made a 500; a line break in it broke the response.
    status, headers, _ = _get(
        api, f"/api/shops/{shop}/segments/loyal/members", "format=csv&limit=10"
    )
    assert status == 200
    value = headers["content-disposition"]
    assert value == f"attachment; filename=\"{plain}\"; filename*=UTF-8''{shop}-loyal.csv"
    assert "\r" not in value and "\n" not in value
    assert _attachment("a b.csv") == "attachment; filename=\"a_b.csv\"; filename*=UTF-8''a%20b.csv"
