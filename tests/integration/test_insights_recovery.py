"""The insights survive a worker's restart on an empty data directory (the tables come back
from their changelogs) and Redis losing their totals (the new worker writes its rows again),
and order events delivered twice count once: after all that, the totals still equal what the
orders and the transitions add up to."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from config.rules import load_rules
from models.routing import marketing_transitions
from streams.changelog import read_topic
from streams.cli.replay import publish
from streams.clients import kafka_options, started
from streams.insights.store import totals_key
from streams.lag import group_lag
from streams.redis_client import connect
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, settings_from, wait_for
from tests.integration.test_insights_api import TOKEN, api_get, expected_insights, half_year

pytestmark = pytest.mark.integration
EVERYTHING = "start=2024-12-01&end=2026-12-31"


async def counted_orders(shop: str) -> int | None:
    performance = await api_get(f"{shop}/performance?{EVERYTHING}")
    return None if performance is None else sum(s["orders"] for s in performance["segments"])


async def test_restart_lost_redis_totals_and_redelivery_change_nothing(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    overrides = {**isolated, "partitions": "2", "api_token": TOKEN, "api_port": str(port)}
    settings = settings_from(overrides)
    await ensure_topics(settings, marketing_transitions(load_rules()))
    shop = f"http://127.0.0.1:{port}/api/shops/shop-a"
    env = {**os.environ, **{f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()}}
    api = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    events = half_year()
    first = [e for e in events if e["occurred_at"] < "2025-03-15"]
    rest = events[len(first) :]
    log = tmp_path / "worker.log"
    worker = spawn_worker(overrides, log)
    try:
        records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in first]
        assert await publish(settings, iter(records)) == len(records)
        placed_first = sum(1 for e in first if e["type"] == "order_placed")
        await wait_for(lambda: counted_orders(shop), lambda n: n == placed_first, 90,
                       "the first orders to be counted")  # fmt: skip
        assert stop_worker(worker) == 0, log.read_text(errors="replace")[-3000:]

        # a new machine (nothing on disk) and a Redis that lost the totals
        shutil.rmtree(overrides["data_dir"])
        redis = connect(settings.redis_url.get_secret_value())
        await redis.delete(totals_key(settings.redis_prefix, "shop-a"))
        await redis.aclose()
        worker = spawn_worker({**overrides, "data_dir": str(tmp_path / "second")}, log)
        await wait_for(lambda: counted_orders(shop), lambda n: n == placed_first, 90,
                       "the recovered totals to be written again")  # fmt: skip

        records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in rest]
        assert await publish(settings, iter(records)) == len(records)
        await wait_for(lambda: group_lag(settings), lambda lag: bool(lag) and all(
            p.committed == p.end for p in lag), 90, "the worker to process the orders")  # fmt: skip

        # every order event delivered a second time, to its partition
        delivered = [r async for r in read_topic(settings, settings.orders_topic)]
        assert len(delivered) == len(events)
        producer = await started(AIOKafkaProducer(**kafka_options(settings), acks="all"))
        try:
            sent = [
                await producer.send(r.topic, key=r.key, value=r.value, partition=r.partition)
                for r in delivered
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        await wait_for(lambda: group_lag(settings), lambda lag: bool(lag) and all(
            p.committed == p.end for p in lag), 90, "the orders to be processed again")  # fmt: skip
        expected = await expected_insights(settings, events)
        placed = len(expected.placed)
        await wait_for(lambda: counted_orders(shop), lambda n: n == placed, 30,
                       "every order to be counted once")  # fmt: skip
        version = (await api_get(f"{shop}/version"))["version"]
        await wait_for(lambda: api_get(f"{shop}/version"), lambda v: v["version"] == version,
                       5, "the totals to settle", interval=2.5)  # fmt: skip

        performance = (await api_get(f"{shop}/performance?{EVERYTHING}"))["segments"]
        assert {s["segment"]: s["orders"] for s in performance if s["orders"]} == {
            k: v for k, v in expected.orders.items() if v
        }
        assert {s["segment"]: s["revenue"]["EUR"] for s in performance if s["revenue"]} == {
            k: v for k, v in expected.revenue.items() if v
        }
        matrix = (await api_get(f"{shop}/flows?{EVERYTHING}"))["matrix"]
        got = {(a, b): n for a, row in matrix.items() for b, n in row.items() if n}
        assert got == dict(expected.flows)
        history = await api_get(f"{shop}/history")
        last = {s: sizes[-1] for s, sizes in history["sizes"].items() if sizes[-1]}
        assert last == dict(expected.final)
    finally:
        api.terminate()
        api.wait(15)
        text = log.read_text(errors="replace")
        assert stop_worker(worker) == 0, text[-3000:]
        assert "Traceback" not in text, text[-5000:]
