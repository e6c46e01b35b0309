"""The insights HTTP API and dashboard (``segmenter api``): FastAPI over the Redis copy of the
segment insights and the customer cache; never a worker. Every ``/api`` path needs the API
token (``Authorization: Bearer <SEGMENTER_API_TOKEN>``); the dashboard's page and its scripts
hold no data and are served without it (the page asks for the token). OpenAPI:
``/api/openapi.json``. The views are listed in ``docs/insights.md``."""

from __future__ import annotations

import contextlib
import csv
import hmac
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, SecretStr, StringConstraints

from config.settings import Settings
from models.insights import NO_SEGMENT, in_period, retention, size_history, sizes_before
from models.rules import SegmentRules
from streams.insights.store import BadCursor, InsightsReader
from streams.redis_client import connect
from streams.shop_models import Privacy

STATIC = resources.files("streams.insights") / "static"
MAX_PAGE = 1000
# A month of the retention view: YYYY-MM, months 01 to 12.
MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"
# The member fields in a page and in the CSV export, in this order.
MEMBER_FIELDS = (
    "customer_id",
    "segment",
    "segment_since",
    "currency",
    "order_count",
    "total_spend",
    "average_order_value",
    "last_order_at",
    "recency_days",
    "r_score",
    "f_score",
    "m_score",
    "tags",
)


class Period(BaseModel):
    start: date
    end: date


def _period(start: date | None, end: date | None) -> Period:
    """Default: the 30 days up to today (UTC)."""
    last = end or datetime.now(UTC).date()
    try:
        first = start or last - timedelta(days=29)
    except OverflowError:  # an end within 29 days of 0001-01-01
        first = date.min
    if first > last:
        raise HTTPException(422, f"the period starts after it ends ({first} > {last})")
    return Period(start=first, end=last)


def create_api(settings: Settings, rules: SegmentRules) -> FastAPI:
    """The API over ``settings``' Redis, for ``rules``' segments."""
    token = settings.api_token
    if token is None:
        raise ValueError("set SEGMENTER_API_TOKEN (at least 16 bytes): the API holds customer data")
    client = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
    reader = InsightsReader(client, settings.redis_prefix, rules.segment_names)
    privacy = Privacy(secret=settings.secret)
    segments = list(rules.segment_names)
    by_name = {rule.name: rule for rule in rules.segments}

    @contextlib.asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        yield
        await reader.cache.close()

    api = FastAPI(
        lifespan=lifespan,
        title="segmenter insights",
        summary="Segment sizes, flows, revenue, retention and members, per shop",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # the interactive pages load their scripts from a CDN
        redoc_url=None,
    )

    def authorised(request: Request) -> None:
        if not _bearer_matches(request.headers.get("Authorization"), token):
            raise HTTPException(
                401,
                "send the API token: Authorization: Bearer <SEGMENTER_API_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="segmenter insights"'},
            )

    guarded = [Depends(authorised)]

    def known(segment: str) -> str:
        if segment not in by_name:
            raise HTTPException(404, f"no segment {segment!r} in rule set {rules.version}")
        return segment

    @api.get("/api/shops", dependencies=guarded)
    async def shops() -> dict[str, Any]:
        """The shops that have insights."""
        return {"shops": await reader.shops()}

    @api.get("/api/shops/{shop}/version", dependencies=guarded)
    async def version(shop: str) -> dict[str, Any]:
        """A number that changes whenever the shop's insights do (poll it for live updates)."""
        return {"shop": shop, "version": await reader.version(shop)}

    @api.get("/api/shops/{shop}/segments", dependencies=guarded)
    async def segment_sizes(shop: str) -> dict[str, Any]:
        """Every segment of the rule set with its current size (the workers' Redis cache)."""
        sizes = await reader.sizes(shop, segments)
        return {
            "shop": shop,
            "rule_version": rules.version,
            "segments": [
                {"segment": s, "description": by_name[s].description, "size": sizes[s]}
                for s in segments
            ],
            "total": sum(sizes.values()),
        }

    @api.get("/api/shops/{shop}/history", dependencies=guarded)
    async def history(
        shop: str, start: date | None = None, end: date | None = None
    ) -> dict[str, Any]:
        """Each segment's size at the end of every day with activity in the period (sizes
        from the daily entries and exits); without ``start`` and ``end``, every such day."""
        if start is not None and end is not None and start > end:
            raise HTTPException(422, f"the period starts after it ends ({start} > {end})")
        totals = await reader.totals(shop)
        full = size_history(totals.days, segments)
        first, last = (start or date.min).isoformat(), (end or date.max).isoformat()
        picked = [i for i, d in enumerate(full.days) if first <= d <= last]
        return {
            "shop": shop,
            "days": [full.days[i] for i in picked],
            "sizes": {s: [full.sizes[s][i] for i in picked] for s in segments},
        }

    @api.get("/api/shops/{shop}/flows", dependencies=guarded)
    async def flows(
        shop: str, start: date | None = None, end: date | None = None
    ) -> dict[str, Any]:
        """The migration matrix of a period: how many moves from each segment (rows, ``-``: no
        segment) to each other (columns), and each segment's size at the period's start."""
        period = _period(start, end)
        totals = await reader.totals(shop)
        moved = in_period(totals.days, period.start, period.end)
        names = [NO_SEGMENT, *segments]
        matrix = {a: dict.fromkeys(names, 0) for a in names}
        for key, count in moved.flows.items():
            a, _, b = key.partition(">")
            matrix.setdefault(a, dict.fromkeys(names, 0))[b] = count
        return {
            "shop": shop,
            "start": period.start,
            "end": period.end,
            "segments": names,
            "matrix": matrix,
            "sizes_at_start": sizes_before(totals.days, period.start.isoformat(), segments),
        }

    @api.get("/api/shops/{shop}/performance", dependencies=guarded)
    async def performance(
        shop: str, start: date | None = None, end: date | None = None
    ) -> dict[str, Any]:
        """Per segment over a period: customers who entered and left, orders placed while in
        it, and net revenue (minor units, per currency)."""
        period = _period(start, end)
        totals = await reader.totals(shop)
        done = in_period(totals.days, period.start, period.end)
        rows = []
        for s in segments:
            revenue = {}
            for key, amount in done.revenue.items():
                seg, _, currency = key.partition("|")
                if seg == s:
                    revenue[currency] = revenue.get(currency, 0) + amount
            rows.append(
                {
                    "segment": s,
                    "entered": done.entered.get(s, 0),
                    "left": done.left.get(s, 0),
                    "orders": done.orders.get(s, 0),
                    "revenue": revenue,
                }
            )
        return {"shop": shop, "start": period.start, "end": period.end, "segments": rows}

    @api.get("/api/shops/{shop}/retention", dependencies=guarded)
    async def retention_view(
        shop: str,
        month: Annotated[
            list[Annotated[str, StringConstraints(pattern=MONTH)]] | None, Query()
        ] = None,
    ) -> dict[str, Any]:
        """Per month and segment: the customers in the segment at the month's start, how many
        of them ordered during the month, and the share (see docs/insights.md). Default: every
        month with activity."""
        totals = await reader.totals(shop)
        months = month or sorted({d[:7] for d in totals.days})
        rows = [
            r.model_dump()
            for m in months
            for r in retention(totals.days, totals.months, m, segments)
        ]
        return {"shop": shop, "months": months, "retention": rows}

    @api.get("/api/shops/{shop}/segments/{segment}/members", dependencies=guarded)
    async def members(
        shop: str,
        segment: str,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ) -> Response:
        """The segment's members, a page at a time (``cursor``: the ``next`` of the previous
        page); ``format=csv``: every member, as CSV for a mail tool (the page size then only
        sets how many are read at a time)."""
        known(segment)
        if format == "csv":
            return StreamingResponse(
                _csv(reader, shop, segment, limit),
                media_type="text/csv",
                headers={"Content-Disposition": _attachment(f"{shop}-{segment}.csv")},
            )
        try:
            page = await reader.members(shop, segment, cursor, limit)
        except BadCursor as exc:
            raise HTTPException(422, str(exc)) from None
        rows = await reader.customers(shop, page.members, MEMBER_FIELDS)
        body = {
            "shop": shop,
            "segment": segment,
            "members": [_member(row) for row in rows if row],
            "next": page.cursor,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    @api.get("/api/shops/{shop}/customers/{customer_id}", dependencies=guarded)
    async def customer(shop: str, customer_id: str) -> dict[str, Any]:
        """One customer and why they are in their segment: the R/F/M values and scores, the
        rule that matched, the tags, and when the inactivity rule will move them if they do
        not order. Erased customers are not found."""
        fields = await reader.customer(shop, privacy.stored_id(shop, customer_id))
        if not fields:
            raise HTTPException(404, f"customer {customer_id!r} of shop {shop!r} is not known")
        return _why(customer_id, fields, by_name, rules.version)

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        files = {"dashboard.js", "dashboard.css", "chart.umd.min.js"}
        if name not in files:
            raise HTTPException(404, "no such file")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return FileResponse(str(STATIC / name), media_type=kind)

    return api


def _bearer_matches(authorization: str | None, token: SecretStr) -> bool:
    scheme, _, given = (authorization or "").strip().partition(" ")
    same = hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.get_secret_value().encode()
    )
    return scheme.lower() == "bearer" and same


def _attachment(filename: str) -> str:
    """A Content-Disposition header value for ``filename``, whatever characters the shop id
    holds (RFC 6266: a plain ASCII name, and the name itself percent-encoded in UTF-8); a
    quote, a line break or a character outside Latin-1 would break the header."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _member(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {name: row.get(name, "") for name in MEMBER_FIELDS}
    out["tags"] = orjson.loads(row["tags"]) if row.get("tags") else []
    return out


async def _csv(reader: InsightsReader, shop: str, segment: str, step: int) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MEMBER_FIELDS)
    cursor: str | None = None
    while True:
        page = await reader.members(shop, segment, cursor, step)
        for row in await reader.customers(shop, page.members, MEMBER_FIELDS):
            if row:
                member = _member(row)
                member["tags"] = " ".join(member["tags"])
                writer.writerow([member[name] for name in MEMBER_FIELDS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if page.cursor is None:
            return
        cursor = page.cursor


def _why(
    customer_id: str, fields: dict[str, str], rules: dict[str, Any], version: str
) -> dict[str, Any]:
    """The customer's "why" from the cached fields and the rule set."""
    segment = fields.get("segment") or None
    rule = rules.get(segment) if segment else None

    def number(name: str) -> float | None:
        value = fields.get(name, "")
        return float(value) if value not in ("", "None") else None

    due = None
    last, after = fields.get("last_order_at"), number("inactive_after_days")
    if segment != "inactive" and last and after is not None:
        due = {
            "at": (datetime.fromisoformat(last) + timedelta(days=after)).isoformat(),
            "to_segment": "inactive",
            "why": f"no order for {after:g} days (the customer's own rhythm: the inactivity rule)",
        }
    return {
        "customer_id": customer_id,
        "stored_as": fields.get("customer_id", customer_id),
        "shop": fields.get("shop_id"),
        "segment": segment,
        "segment_since": fields.get("segment_since") or None,
        "rfm": {
            "recency_days": number("recency_days"),
            "frequency": number("order_count"),
            "monetary": number("total_spend"),
            "r_score": number("r_score"),
            "f_score": number("f_score"),
            "m_score": number("m_score"),
        },
        "figures": {
            k: fields.get(k)
            for k in (
                "currency",
                "average_order_value",
                "discount_share",
                "first_order_at",
                "last_order_at",
                "typical_gap_days",
                "inactive_after_days",
                "as_of",
            )
        },
        "rule": None
        if rule is None
        else {
            "name": rule.name,
            "description": rule.description,
            "when": rule.when.model_dump(exclude_none=True),
            "rule_version": fields.get("rule_version") or version,
            "calibration_version": fields.get("calibration_version") or None,
        },
        "tags": orjson.loads(fields["tags"]) if fields.get("tags") else [],
        "top_categories": orjson.loads(fields["top_categories"])
        if fields.get("top_categories")
        else [],
        "next_due": due,
        "predictions": _predictions(fields),
    }


def _predictions(fields: dict[str, str]) -> dict[str, Any] | None:
    """The customer's predictions as the worker cached them (None: the shop has no prediction
    model, see docs/predictions.md)."""
    if not fields.get("p_alive"):
        return None
    clv = fields.get("predicted_clv")
    return {
        "p_alive": float(fields["p_alive"]),
        "expected_orders_90d": float(fields.get("expected_orders_90d") or 0.0),
        "predicted_clv": float(clv) if clv else None,
        "model": fields.get("prediction_model") or None,
    }
