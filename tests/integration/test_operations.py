"""Operations on the running system: lag from /metrics, from `segmenter lag` and from Kafka's
own ConsumerGroupCommand agree to the message; health, readiness and JSON logs; who may pause
the worker, and what its HTTP port does not serve."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from config.rules import load_rules
from models.routing import marketing_transitions
from models.state import CustomerState
from streams.cli.devstack import Devstack
from streams.cli.replay import publish
from streams.clients import kafka_options
from streams.codecs import encode_stored
from streams.lag import group_lag
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import cli_result, free_port, run_cli, settings_from, wait_for
from tests.factories import placed

pytestmark = pytest.mark.integration
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LAG = re.compile(r'^segmenter_consumer_lag_messages\{partition="(\d+)",topic="([^"]+)"\} (\S+)$')


@pytest.fixture
def ops_worker(isolated: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    overrides = {
        **isolated,
        "partitions": "2",
        "web_port": str(free_port()),
        "admin_token": ADMIN_TOKEN,
    }
    asyncio.run(ensure_topics(settings_from(overrides), marketing_transitions(load_rules())))
    log = tmp_path / "worker.log"
    process = spawn_worker(overrides, log)
    yield {"overrides": overrides, "log": log}
    assert stop_worker(process) == 0, log.read_text()[-3000:]


def _orders(first: int, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"c{i % 7}".encode(), orjson.dumps(placed(f"c{i % 7}", f"o{i}", i)))
        for i in range(first, first + count)
    ]


async def _get(
    port: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as response,
    ):
        body = await response.read()
        kind = response.headers.get("Content-Type", "")
        return response.status, orjson.loads(body) if "json" in kind else body.decode()


async def _metrics_lag(port: str, topic: str) -> dict[int, float]:
    status, text = await _get(port, "/metrics")
    assert status == 200
    found = {}
    for line in text.splitlines():
        match = LAG.match(line)
        if match and match.group(2) == topic:
            found[int(match.group(1))] = float(match.group(3))
    return found


async def _segmenter_lag(overrides: dict[str, str]) -> dict[int, int | None]:
    out = await run_cli(overrides, "lag", "--json")
    return {row["partition"]: row["lag"] for row in map(orjson.loads, out.splitlines())}


async def _kafka_tool_lag(stack: Devstack, group: str, topic: str) -> dict[int, int]:
    """LAG per partition as Kafka's own ConsumerGroupCommand reports it."""
    process = await asyncio.create_subprocess_exec(
        "java",
        "-cp",
        stack.classpath,
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        f"127.0.0.1:{stack.kafka_port}",
        "--describe",
        "--group",
        group,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    lines = [line.split() for line in stdout.decode().splitlines() if line.strip()]
    header = next(cols for cols in lines if "LAG" in cols)
    at = {name: header.index(name) for name in ("TOPIC", "PARTITION", "LAG")}
    return {
        int(cols[at["PARTITION"]]): int(cols[at["LAG"]])
        for cols in lines
        if len(cols) > at["LAG"] and cols[at["TOPIC"]] == topic
    }


async def test_lag_agrees_everywhere_and_drains(
    ops_worker: dict[str, Any], devstack: Devstack
) -> None:
    overrides = ops_worker["overrides"]
    port, settings = overrides["web_port"], settings_from(overrides)
    topic = settings.orders_topic
    assert await publish(settings, iter(_orders(0, 5))) == 5
    await wait_for(
        lambda: group_lag(settings),
        lambda lag: sum(p.lag or 0 for p in lag) == 0 and all(p.committed is not None for p in lag),
        90,
        "the first orders",
    )
    _, ready = await wait_for(lambda: _get(port, "/readyz"), lambda r: r[0] == 200, 30, "ready")
    assert ready == {
        "ready": True,
        "checks": {"recovered": True, "broker": True, "redis": True, "disk": True},
    }
    assert (await _get(port, "/healthz")) == (200, {"status": "alive"})

    assert (await _get(port, "/pause", "POST", ADMIN)) == (200, {"paused": True})
    n = 37
    assert await publish(settings, iter(_orders(5, n))) == n

    ours = await wait_for(
        lambda: _segmenter_lag(overrides),
        lambda lag: sum(lag.values()) == n,
        30,
        "segmenter lag to show the new orders",
    )
    assert await _kafka_tool_lag(devstack, settings.app_id, topic) == ours
    assert await wait_for(
        lambda: _metrics_lag(port, topic), lambda m: m == ours, 30, "/metrics to show the same lag"
    ) == {p: float(v) for p, v in ours.items()}
    _, text = await _get(port, "/metrics")
    ages = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("segmenter_consumer_lag_seconds{") and not line.endswith(" 0.0")
    ]
    assert ages and all(age > 0 for age in ages)

    assert (await _get(port, "/resume", "POST", ADMIN)) == (200, {"paused": False})
    await wait_for(
        lambda: _segmenter_lag(overrides),
        lambda lag: set(lag.values()) == {0},
        60,
        "the worker to catch up",
    )
    assert set((await _kafka_tool_lag(devstack, settings.app_id, topic)).values()) == {0}
    await wait_for(
        lambda: _metrics_lag(port, topic),
        lambda m: set(m.values()) == {0.0},
        30,
        "/metrics lag back to 0",
    )
    _, text = await _get(port, "/metrics")
    assert 'segmenter_events_total{type="order_placed"} 42.0' in text

    records = [line for line in ops_worker["log"].read_text().splitlines() if line.strip()]
    parsed = [orjson.loads(line) for line in records]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(parsed[-1])


async def test_pausing_takes_the_token_from_the_workers_own_origin(
    ops_worker: dict[str, Any],
) -> None:
    overrides = ops_worker["overrides"]
    port, settings = overrides["web_port"], settings_from(overrides)
    topic = settings.orders_topic

    async def lag() -> int:  # a partition the group never committed: all of it
        return sum(p.end if p.lag is None else p.lag for p in await group_lag(settings))

    assert await publish(settings, iter([(b"alice", orjson.dumps(placed("alice", "a1", 0)))])) == 1
    await wait_for(_stats(port), lambda s: s["events"].get("order_placed") == 1, 90, "alice")
    # Faust's views would serve her stored state, and the cluster's layout, to anyone
    for path in ("/table/", "/table/customers/", "/table/customers/default%2Falice/", "/router/"):
        assert (await _get(port, path))[0] == 404, path

    status, body = await _get(port, "/pause", "POST")
    assert status == 401
    assert "Authorization: Bearer" in body["error"]
    wrong = {"Authorization": "Bearer not-the-admin-token-0000"}
    assert (await _get(port, "/resume", "POST", wrong))[0] == 401
    # a page of another site, even one whose request carries the token
    for cross_site in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = await _get(port, "/pause", "POST", {**ADMIN, **cross_site})
        assert refused == (403, {"error": "cross-site request refused"})
    assert (await _get(port, "/pause")) == (200, {"paused": False})  # GET: read-only, open
    _, text = await _get(port, "/metrics")
    assert "segmenter_paused 0.0" in text

    own = {**ADMIN, "Origin": f"http://127.0.0.1:{port}"}
    assert (await _get(port, "/pause", "POST", own)) == (200, {"paused": True})
    assert (await _get(port, "/pause")) == (200, {"paused": True})
    assert await publish(settings, iter([(b"bob", orjson.dumps(placed("bob", "b1", 0)))])) == 1
    # the worker's own lag probe (every few seconds) sees bob's order still waiting
    await wait_for(lambda: _metrics_lag(port, topic), lambda m: sum(m.values()) == 1, 30, "lag")
    assert await lag() == 1
    assert (await _get(port, "/stats"))[1]["events"]["order_placed"] == 1

    assert (await _get(port, "/resume", "POST", ADMIN)) == (200, {"paused": False})
    await wait_for(_stats(port), lambda s: s["events"].get("order_placed") == 2, 60, "bob")
    await wait_for(lag, lambda n: n == 0, 30, "the worker to commit bob's order")


def _stats(port: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def stats() -> dict[str, Any]:
        try:
            status, body = await _get(port, "/stats")
        except aiohttp.ClientConnectionError:  # the worker is starting
            return {"events": {}}
        assert status == 200
        result: dict[str, Any] = body
        return result

    return stats


async def test_without_an_admin_token_pausing_is_off(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    overrides = {**isolated, "web_port": str(free_port())}
    await ensure_topics(settings_from(overrides), marketing_transitions(load_rules()))
    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        port = overrides["web_port"]

        async def health() -> tuple[int, Any]:
            try:
                return await _get(port, "/healthz")
            except aiohttp.ClientConnectionError:
                return (0, None)

        await wait_for(health, lambda r: r[0] == 200, 120, "the worker's HTTP server")
        for path in ("/pause", "/resume"):
            status, body = await _get(port, path, "POST", ADMIN)
            assert status == 403
            assert "SEGMENTER_ADMIN_TOKEN" in body["error"]
        assert (await _get(port, "/pause")) == (200, {"paused": False})
    finally:
        assert await asyncio.to_thread(stop_worker, process) == 0


async def test_not_ready_while_recovering(isolated: dict[str, str], tmp_path: Path) -> None:
    overrides = {**isolated, "partitions": "2", "web_port": str(free_port())}
    settings = settings_from(overrides)
    await ensure_topics(settings, marketing_transitions(load_rules()))
    # A changelog with many customers, so a worker with an empty store has much to recover.
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    await admin.create_topics(
        [NewTopic(settings.changelog_topic, 2, 1, topic_configs={"cleanup.policy": "compact"})]
    )
    await admin.close()
    producer = AIOKafkaProducer(**kafka_options(settings), linger_ms=50)
    await producer.start()
    customers = 40_000
    for i in range(customers):
        state = CustomerState(shop_id="default", customer_id=f"r{i}")
        await producer.send(
            settings.changelog_topic,
            key=state.key.encode(),
            value=encode_stored(i % 2, state),
            partition=i % 2,
        )
    await producer.flush()
    await producer.stop()

    process = spawn_worker(overrides, tmp_path / "worker.log")
    try:
        port = overrides["web_port"]
        seen: list[tuple[int, Any]] = []

        async def probe() -> tuple[int, Any]:
            try:
                result = await _get(port, "/readyz")
            except aiohttp.ClientConnectionError:
                return (0, None)
            seen.append(result)
            return result

        await wait_for(probe, lambda r: r[0] == 200, 120, "readiness", interval=0.05)
        not_ready = [body for status, body in seen if status == 503]
        assert not_ready, f"never saw the worker recovering: {seen[:3]}"
        assert all(body["checks"]["recovered"] is False for body in not_ready)
        _, text = await _get(port, "/metrics")
        assert f"segmenter_table_customers {float(customers)}" in text
    finally:
        assert await asyncio.to_thread(stop_worker, process) == 0


async def test_dead_letters_are_listed_and_sent_back(ops_worker: dict[str, Any]) -> None:
    """`segmenter dead-letters` shows why and from where each record was rejected, with the
    record; `--redrive --reason R` sends those records back to their topic, where the worker
    processes them again (here: rejected again, from their new offsets)."""
    overrides = ops_worker["overrides"]
    settings = settings_from(overrides)
    eur = placed("dora", "d-o1", 0)
    gbp = placed("dora", "d-o2", 1, currency="GBP")  # dora buys in EUR: rejected
    bad = (b"dora", b'{"type": "order_placed", "order_id": ')
    sent = [(b"dora", orjson.dumps(eur)), (b"dora", orjson.dumps(gbp)), bad]
    assert await publish(settings, iter(sent)) == 3

    async def letters() -> list[dict[str, Any]]:
        text = await run_cli(overrides, "dead-letters", "--json", "--limit", "0")
        return [orjson.loads(line) for line in text.splitlines()]

    found = await wait_for(letters, lambda ls: len(ls) == 2, 90, "two dead letters")
    by_reason = {letter["reason"]: letter for letter in found}
    assert set(by_reason) == {"currency_mismatch", "malformed_json"}
    mismatch = by_reason["currency_mismatch"]
    assert mismatch["source"]["topic"] == settings.orders_topic
    assert orjson.loads(mismatch["value"]) == gbp
    assert mismatch["key"] == "dora"
    assert "GBP" in mismatch["message"]

    table = await run_cli(overrides, "dead-letters", "--reason", "malformed_json")
    assert "1 of 1 shown; all 2: " in table

    out = await run_cli(overrides, "dead-letters", "--redrive", "--reason", "currency_mismatch")
    assert "sent 1 dead letters back" in out
    found = await wait_for(letters, lambda ls: len(ls) == 3, 90, "the redriven record again")
    again = [letter for letter in found if letter["reason"] == "currency_mismatch"]
    assert len(again) == 2
    assert again[1]["value"] == again[0]["value"]
    assert again[1]["source"]["partition"] == again[0]["source"]["partition"]
    assert again[1]["source"]["offset"] > again[0]["source"]["offset"]
    dlq = settings.dlq_topic
    first = again[0]["dlq"]
    assert again[1]["redriven_from"] == f"{dlq}[{first['partition']}]@{first['offset']}"
    # a second redrive sends the newer dead letter only, not both
    out = await run_cli(overrides, "dead-letters", "--redrive", "--reason", "currency_mismatch")
    assert "sent 1 dead letters back" in out
    await wait_for(letters, lambda ls: len(ls) == 4, 90, "the newer one again")


async def test_a_recalibration_with_too_few_customers_says_so(isolated: dict[str, str]) -> None:
    result = cli_result(isolated, "recalibrate")
    assert result.returncode == 0, result.stderr
    assert "nothing published: no shop has 20 customers with orders" in " ".join(
        result.stderr.split()
    )
