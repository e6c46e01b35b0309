"""``python -m bench.insights``: the insights API's latency with a million customers in Redis.

Fills a Redis prefix of its own with ``--customers`` customer hashes and segment sets laid out
as the workers write them, and two years of daily totals over four partitions; starts
``segmenter api`` on it; then measures, over one kept-alive HTTP connection per client, the
segment sizes (``/segments``), 100-row member pages (``/members``, following the cursors
through the segments), and a month's flow matrix (``/flows``). Prints the percentiles and
deletes its keys."""

from __future__ import annotations

import http.client
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click
import orjson
import redis

from config.rules import load_rules
from config.settings import DEVSTACK_REDIS_PORT
from models.insights import Totals
from streams.insights.store import SHOPS_KEY, row_field, totals_key, version_key
from streams.redis_layout import bucket

SHOP = "default"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(client: redis.Redis, prefix: str, customers: int, segments: list[str]) -> None:
    rng = random.Random(5)
    weights = [rng.uniform(0.2, 3.0) for _ in segments]
    started = time.monotonic()
    pipe = client.pipeline(transaction=False)
    for n in range(customers):
        cid = f"c{n:07d}"
        segment = rng.choices(segments, weights)[0]
        tag = f"{prefix}{{{SHOP}:{bucket(cid)}}}:"
        last = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 700_000))
        pipe.hset(f"{tag}customer:{cid}", mapping={
            "shop_id": SHOP, "customer_id": cid, "revision": "3", "segment": segment,
            "segment_since": last.isoformat(), "as_of": last.isoformat(), "currency": "EUR",
            "order_count": str(rng.randint(1, 20)), "total_spend": str(rng.randint(1000, 90000)),
            "average_order_value": "4500", "discount_share": "0.05",
            "first_order_at": "2024-03-01T10:00:00+00:00", "last_order_at": last.isoformat(),
            "recency_days": "12.5", "typical_gap_days": "21.0", "inactive_after_days": "63.0",
            "r_score": "4", "f_score": "3", "m_score": "4", "tags": '["prefers_shoes"]',
            "top_categories": '["shoes"]', "rule_version": "rfm-2026.12.1",
            "calibration_version": "bootstrap",
        })  # fmt: skip
        pipe.sadd(f"{tag}segment:{segment}", cid)
        if n % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    rows: dict[str, bytes] = {}
    day = date(2024, 12, 1)
    for _ in range(730):
        for partition in range(4):
            totals = Totals(
                entered={s: rng.randint(0, 400) for s in segments},
                left={s: rng.randint(0, 400) for s in segments},
                flows={f"{a}>{b}": rng.randint(0, 50) for a in segments[:6] for b in segments[:6]},
                orders={s: rng.randint(0, 900) for s in segments},
                revenue={f"{s}|EUR": rng.randint(0, 9_000_000) for s in segments},
            )
            rows[row_field(partition, f"d:{day.isoformat()}")] = totals.model_dump_json().encode()
        day += timedelta(days=1)
    client.hset(totals_key(prefix, SHOP), mapping=rows)
    client.hset(version_key(prefix, SHOP), mapping={str(p): 1 for p in range(4)})
    client.sadd(f"{prefix}{SHOPS_KEY}", SHOP)
    click.echo(f"filled {customers} customers in {time.monotonic() - started:.0f} s")


def measure(port: int, token: str, paths: list[str]) -> list[float]:
    """Milliseconds per request, over one kept-alive connection; members pages follow their
    cursors (``{cursor}`` in a path)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    took: list[float] = []
    cursor = ""
    for path in paths:
        url = path.replace("{cursor}", cursor)
        start = time.perf_counter()
        connection.request("GET", url, headers=headers)
        response = connection.getresponse()
        body = response.read()
        took.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")
        if "{cursor}" in path:
            cursor = orjson.loads(body)["next"] or ""
    connection.close()
    return took


def summary(name: str, took: list[float]) -> str:
    q = statistics.quantiles(took, n=100)
    return (
        f"| {name} | {len(took)} | {statistics.median(took):.1f} | {q[94]:.1f} | {q[98]:.1f} "
        f"| {max(took):.1f} |"
    )


@click.command()
@click.option("--customers", default=1_000_000, show_default=True)
@click.option("--requests", default=2000, show_default=True, help="per endpoint and client")
@click.option("--clients", default=1, show_default=True, help="concurrent clients")
@click.option(
    "--redis-url", default=f"redis://127.0.0.1:{DEVSTACK_REDIS_PORT}/0", show_default=True
)
def main(customers: int, requests: int, clients: int, redis_url: str) -> None:
    prefix = f"bench-insights-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    segments = list(load_rules().segment_names)
    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {**os.environ, "SEGMENTER_REDIS_URL": redis_url, "SEGMENTER_REDIS_PREFIX": prefix,
           "SEGMENTER_API_TOKEN": token, "SEGMENTER_API_PORT": str(port),
           "SEGMENTER_LOG_LEVEL": "warning"}  # fmt: skip
    api = None
    try:
        fill(client, prefix, customers, segments)
        biggest = max(segments, key=lambda s: sum(
            client.scard(f"{prefix}{{{SHOP}:{b}}}:segment:{s}") for b in range(16)))  # fmt: skip
        log = Path(f"/tmp/{prefix.rstrip(':')}-api.log")
        with log.open("wb") as out:
            api = subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                measure(port, token, [f"/api/shops/{SHOP}/version"])
                break
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        shop = f"/api/shops/{SHOP}"
        workloads = {
            "segment sizes (`/segments`)": [f"{shop}/segments"] * requests,
            "100-row member page (`/members`)": [
                f"{shop}/segments/{biggest}/members?limit=100&cursor={{cursor}}"
            ]
            * requests,
            "a month's flow matrix (`/flows`, 2 years of totals)": [
                f"{shop}/flows?start=2025-03-01&end=2025-03-31"
            ]
            * (requests // 4),
        }
        click.echo(f"{customers} customers; biggest segment {biggest}; {clients} client(s)\n")
        click.echo("| request | n | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
        for name, paths in workloads.items():
            measure(port, token, paths[:50])  # warm-up
            results: list[list[float]] = [[] for _ in range(clients)]

            def run(i: int, paths: list[str] = paths, results: list[list[float]] = results) -> None:
                results[i] = measure(port, token, paths)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            click.echo(summary(name, [x for r in results for x in r]))
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
        client.close()


if __name__ == "__main__":
    main()
