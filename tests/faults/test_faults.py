"""Fault injection on the real broker, Redis and worker processes (bounded, loopback only).

Every scenario replays the same synthetic stream (with bad records) while something goes
wrong, then checks: every customer's R/F/M equals a batch recomputation, the set of transition
ids equals the set of a clean run (duplicates are allowed, they carry the same id), Redis equals
the tables, the dead-letter topic holds exactly the bad records, and every input record is
accounted for: its effect is in the tables, or it is dead-lettered ("records skipped" counts
the orders whose effect is missing and the bad records not dead-lettered: must be 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from config.rules import load_rules
from config.settings import Settings
from models.routing import marketing_transitions
from models.segment_model import bootstrap_calibration
from models.state import compute_metrics
from streams.changelog import read_table, read_topic
from streams.cli.devstack import Devstack
from streams.clients import kafka_options
from streams.lag import group_lag
from streams.local_store import LOCK_FILE
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import ROOT, free_port, settings_from, wait_for
from tests.factories import T0
from tests.synthetic import batch_rfm, synthetic_year

pytestmark = [pytest.mark.integration, pytest.mark.faults]
CUSTOMERS = 120
CHUNKS = 12
REDIS_DOWN_SECONDS = 20.0


def _bad_order(**change: Any) -> bytes:
    good = {
        "type": "order_placed",
        "order_id": "bad",
        "customer_id": "y0001",
        "occurred_at": T0.isoformat(),
        "currency": "EUR",
        "total": 100,
        "lines": [{"sku": "s", "category": "c", "quantity": 1, "unit_price": 100}],
    }
    return orjson.dumps({**good, **change})


# One of every kind of bad input a webshop's stream can carry.
BAD = [
    (b"y0001", b'{"type": "order_placed", "order_id": '),  # malformed JSON
    (b"y0001", _bad_order(total="lots")),  # wrong type
    (b"y0001", _bad_order(order_id=None)),  # missing id
    (b"y0001", _bad_order(lines=[{"sku": "s", "category": "c", "quantity": -2, "unit_price": 1}])),
    (b"y0001", _bad_order(total=10**13)),  # absurd amount
    (b"y0001", _bad_order(currency="XYZ")),  # unknown currency
    (b"y0001", _bad_order(occurred_at="2999-01-01T00:00:00Z")),  # far in the future
    (b"y0001", _bad_order(occurred_at="1985-01-01T00:00:00Z")),  # before 1990
    (b"y0001", _bad_order(note="x" * 300_000)),  # huge
    (b"\xff\xfe", _bad_order()),  # key not UTF-8
    (b"y0001", orjson.dumps({"type": "order_teleported", "customer_id": "y0001"})),
]
RESULTS: list[dict[str, Any]] = []


@dataclass
class Stream:
    events: list[dict[str, Any]]
    records: list[tuple[bytes, bytes]]
    bad_at: set[int] = field(default_factory=set)  # indexes of the bad records in ``records``
    # Customers erased on the way: absent from the tables and Redis at the end.
    erased: set[str] = field(default_factory=set)


def make_stream(duplicate_and_reorder: bool = False) -> Stream:
    events = synthetic_year(customers=CUSTOMERS)
    records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
    if duplicate_and_reorder:
        rng = random.Random(7)
        records = [r for r in records for _ in range(2 if rng.random() < 0.2 else 1)]
        for _ in range(len(records) // 10):
            a = rng.randrange(len(records) - 21)
            records.insert(a + rng.randint(1, 20), records.pop(a))
    stream = Stream(events, records)
    step = len(records) // (len(BAD) + 1)
    for n, bad in enumerate(BAD, start=1):
        stream.records.insert(n * step + n - 1, bad)
    stream.bad_at = {i for i, r in enumerate(stream.records) if r in BAD}
    assert len(stream.bad_at) == len(BAD)
    return stream


class Harness:
    """Workers as processes, the stream published in chunks, faults in between."""

    def __init__(self, overrides: dict[str, str], tmp_path: Path, clock: str = "event") -> None:
        self.overrides = {**overrides, "partitions": "2", "clock": clock}
        self.settings = settings_from(self.overrides)
        self.tmp = tmp_path
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        # (topic, partition, offset) of every record that must end on the dead-letter topic
        self.bad_positions: set[tuple[str, int, int]] = set()
        self.recovery_seconds = 0.0

    async def __aenter__(self) -> Harness:
        await ensure_topics(self.settings, marketing_transitions(load_rules()))
        return self

    async def __aexit__(self, *_: object) -> None:
        for name in list(self.workers):
            await self.stop(name)

    def start(
        self, name: str, injected: dict[str, Any] | None = None, data_dir: str | None = None
    ) -> None:
        overrides = {
            **self.overrides,
            "data_dir": str(self.tmp / (data_dir or name)),
            "web_port": str(free_port()),
        }
        if injected is None:
            self.workers[name] = spawn_worker(overrides, self.tmp / f"{name}.log")
            return
        env = {
            **os.environ,
            **{f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()},
            "INJECTED_FAULTS": json.dumps(injected),
        }
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.workers[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.injected_worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.workers.pop(name)
        if sig == signal.SIGKILL:
            process.kill()
            process.wait()
        else:
            await asyncio.to_thread(stop_worker, process)

    async def restart_after_kill(self, name: str) -> None:
        await self.stop(name, signal.SIGKILL)
        started = time.monotonic()
        self.start(name)
        await self.settle()
        self.recovery_seconds = max(self.recovery_seconds, time.monotonic() - started)

    async def publish(self, stream: Stream, between: dict[int, Any]) -> None:
        producer = AIOKafkaProducer(
            **kafka_options(self.settings),
            acks="all",
            enable_idempotence=True,
            max_request_size=2**21,  # the 1,000,100-byte record of one scenario
        )
        await producer.start()
        try:
            size = -(-len(stream.records) // CHUNKS)
            for chunk in range(CHUNKS):
                part = list(enumerate(stream.records))[chunk * size : (chunk + 1) * size]
                sent = [
                    (i, await producer.send(self.settings.orders_topic, key=k, value=v))
                    for i, (k, v) in part
                ]
                for i, future in sent:
                    meta = await future
                    if i in stream.bad_at:
                        self.bad_positions.add((meta.topic, meta.partition, meta.offset))
                if chunk in between:
                    await between[chunk]()
        finally:
            await producer.stop()

    async def send(self, topic: str, records: list[tuple[bytes, bytes]], bad: set[int]) -> None:
        """Publish ``records`` to ``topic``; those at the indexes in ``bad`` must be
        dead-lettered."""
        producer = AIOKafkaProducer(**kafka_options(self.settings), acks="all")
        await producer.start()
        try:
            for i, (key, value) in enumerate(records):
                meta = await producer.send_and_wait(topic, key=key, value=value)
                if i in bad:
                    self.bad_positions.add((meta.topic, meta.partition, meta.offset))
        finally:
            await producer.stop()

    async def settle(self, *topics: str) -> None:
        """Wait until the workers committed every record of the orders topic (and of
        ``topics``)."""

        async def probe() -> list[Any]:
            try:
                lags = await group_lag(self.settings)
                for topic in topics:
                    lags += await group_lag(self.settings, topic)
            except KafkaError:  # a broker just restarted: not settled yet
                return []
            return lags

        await wait_for(
            probe,
            lambda lag: bool(lag) and all((p.committed or 0) == p.end for p in lag),
            240,
            "the workers to process every order",
            interval=1.0,
        )

    async def verify(self, name: str, stream: Stream, clean_ids: set[str] | None) -> None:
        settings = self.settings
        table = {k: v.state for k, v in (await read_table(settings)).items()}
        mismatches: list[Any] = []
        skipped = 0
        rules = load_rules()
        calibration = bootstrap_calibration(rules, "default")
        end = T0 + timedelta(days=400)
        for customer, (count, spend, last) in batch_rfm(stream.events).items():
            state = table.get(f"default/{customer}")
            if customer in stream.erased:
                if state is not None:
                    mismatches.append(("erased customer in the table", customer))
                continue
            m = compute_metrics(state, end, rules, calibration) if state else None
            recency = round((end - datetime.fromisoformat(last)).total_seconds() / 86_400, 4)
            if m is None or (m.order_count, m.total_spend, m.recency_days) != (
                count,
                spend,
                recency,
            ):
                mismatches.append(("state", customer))
                skipped += max(count - (m.order_count if m else 0), 0)
        transitions = [
            orjson.loads(r.value) async for r in read_topic(settings, settings.transitions_topic)
        ]
        ids = [t["event_id"] for t in transitions]
        if clean_ids is not None and set(ids) != clean_ids:
            mismatches.append(("transition ids", len(set(ids) ^ clean_ids)))
        mismatches += await _redis_mismatches(settings, table, stream.erased)
        dead = {
            (
                h["segmenter.dlq.topic"],
                int(h["segmenter.dlq.partition"]),
                int(h["segmenter.dlq.offset"]),
            )
            async for h in _dlq_headers(settings)
        }
        if dead != self.bad_positions:
            mismatches.append(("dead letters", sorted(dead ^ self.bad_positions)))
        skipped += len(self.bad_positions - dead)
        RESULTS.append(
            {
                "scenario": name,
                "orders sent": len(stream.records),
                "mismatches": len(mismatches),
                "records skipped": skipped,
                "duplicate ids delivered": len(ids) - len(set(ids)),
                "recovery s": round(self.recovery_seconds, 1),
            }
        )
        assert (mismatches, skipped) == ([], 0)


async def _dlq_headers(settings: Settings) -> Any:
    async for record in read_topic(settings, settings.dlq_topic):
        yield {k: v.decode() for k, v in record.headers}


async def _redis_mismatches(
    settings: Settings,
    table: dict[str, Any],
    erased: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[Any]:
    client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    keys = RedisCache(client, settings.redis_prefix)  # the key layout
    found: list[Any] = []
    try:

        async def cached() -> list[Any]:
            wrong = []
            members: dict[str, set[str]] = defaultdict(set)
            for key, state in table.items():
                shop, customer = key.split("/", 1)
                fields = await client.hgetall(keys.customer_key(shop, customer))
                if (fields.get("segment"), fields.get("revision")) != (
                    state.segment or "",
                    str(state.revision),
                ):
                    wrong.append(("redis", customer))
                if state.segment:
                    members[state.segment].add(customer)
            for customer in erased:
                if await client.exists(keys.customer_key("default", customer)):
                    wrong.append(("erased customer in redis", customer))
            for segment in load_rules().segment_names:
                sets = [await client.smembers(k) for k in keys.segment_keys("default", segment)]
                if set().union(*sets) != members[segment]:
                    found_set = set().union(*sets)
                    wrong.append(("redis set", segment, sorted(found_set ^ members[segment])[:6]))
            return wrong

        # Redis converges on its own (retries, refills after a restart): give it a moment.
        found = await wait_for(cached, lambda wrong: wrong == [], 60, "Redis to equal the tables")
    except AssertionError:
        found = await cached()
    finally:
        await client.aclose()
    return found


@pytest.fixture(scope="module")
def clean_ids(tmp_path_factory: pytest.TempPathFactory, devstack: Devstack) -> set[str]:
    """Transition ids of an undisturbed run over the same stream."""
    import uuid

    uid = uuid.uuid4().hex[:10]
    overrides = _isolated(uid, tmp_path_factory.mktemp("clean"))

    async def run() -> set[str]:
        async with Harness(overrides, tmp_path_factory.mktemp("clean-run")) as h:
            h.start("w1")
            stream = make_stream()
            await h.publish(stream, {})
            await h.settle()
            return {
                orjson.loads(r.value)["event_id"]
                async for r in read_topic(h.settings, h.settings.transitions_topic)
            }

    return asyncio.run(run())


def _isolated(uid: str, path: Path) -> dict[str, str]:
    return {
        "app_id": f"fault-{uid}",
        "orders_topic": f"fault-{uid}.orders",
        "transitions_topic": f"fault-{uid}.transitions",
        "dlq_topic": f"fault-{uid}.dlq",
        "consent_topic": f"fault-{uid}.consent",
        "erasure_topic": f"fault-{uid}.erasure",
        "erasure_receipts_topic": f"fault-{uid}.receipts",
        "redis_prefix": f"fault-{uid}:",
        "marketing_topic_prefix": f"fault-{uid}.",
        "data_dir": str(path),
        "log_level": "info",
    }


async def test_kill_9_at_random_points(
    isolated: dict[str, str], tmp_path: Path, clean_ids: set[str]
) -> None:
    rng = random.Random(99)
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")

        async def kill_soon() -> None:
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # while it works through the chunk
            await h.restart_after_kill("w1")

        stream = make_stream()
        await h.publish(
            stream, {1: kill_soon, 3: kill_soon, 5: kill_soon, 7: kill_soon, 9: kill_soon}
        )
        await h.settle()
        await h.verify("kill -9, 5 rounds", stream, clean_ids)


async def test_kill_9_over_sasl_ssl(
    secured: dict[str, str], tmp_path: Path, clean_ids: set[str]
) -> None:
    """On the secured Kafka (SASL_SSL, SCRAM, ACLs) a killed worker's replacement logs in again
    and the run ends as an undisturbed one does."""
    async with Harness(secured, tmp_path) as h:
        h.start("w1")

        async def kill() -> None:
            await asyncio.sleep(0.1)  # while it works through the chunk
            await h.restart_after_kill("w1")

        stream = make_stream()
        await h.publish(stream, {4: kill})
        await h.settle()
        await h.verify("kill -9 over SASL_SSL", stream, clean_ids)


async def test_a_second_worker_joins_and_the_first_leaves(
    isolated: dict[str, str], tmp_path: Path, clean_ids: set[str]
) -> None:
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")

        async def join() -> None:
            h.start("w2")

        async def leave() -> None:
            await h.stop("w1")

        stream = make_stream()
        await h.publish(stream, {3: join, 8: leave})
        await h.settle()
        await h.verify("worker joins, then leaves", stream, clean_ids)


async def test_redis_stopped_and_restarted(
    isolated: dict[str, str], tmp_path: Path, devstack: Devstack, clean_ids: set[str]
) -> None:
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")

        async def redis_down() -> None:
            await asyncio.to_thread(devstack.stop, "redis", print)

        async def redis_up() -> None:
            await asyncio.sleep(REDIS_DOWN_SECONDS)  # the outage lasts while orders flow
            await asyncio.to_thread(devstack.start_redis, print)

        stream = make_stream()
        await h.publish(stream, {3: redis_down, 8: redis_up})
        await h.settle()
        await h.verify("redis down and up", stream, clean_ids)


async def test_broker_stopped_and_restarted(
    isolated: dict[str, str], tmp_path: Path, devstack: Devstack, clean_ids: set[str]
) -> None:
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")
        stream = make_stream()
        first, second = (
            stream.records[: len(stream.records) // 2],
            stream.records[len(stream.records) // 2 :],
        )
        half = Stream(stream.events, first, {i for i in stream.bad_at if i < len(first)})
        await h.publish(half, {})
        await h.settle()  # the worker is up and working when the broker goes away
        await asyncio.to_thread(devstack.stop, "kafka", print)
        await asyncio.to_thread(devstack.start_kafka, print)
        rest = Stream(
            stream.events, second, {i - len(first) for i in stream.bad_at if i >= len(first)}
        )
        await h.publish(rest, {})
        await h.settle()
        await h.verify("broker down and up", stream, clean_ids)


async def test_duplicated_and_reordered_input(isolated: dict[str, str], tmp_path: Path) -> None:
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")
        stream = make_stream(duplicate_and_reorder=True)
        await h.publish(stream, {})
        await h.settle()
        await h.verify("duplicated + reordered input", stream, None)


async def test_a_worker_started_while_the_broker_is_down_waits_for_it(
    isolated: dict[str, str], tmp_path: Path, devstack: Devstack
) -> None:
    async with Harness(isolated, tmp_path) as h:
        await asyncio.to_thread(devstack.stop, "kafka", print)
        try:
            h.start("w1")
            log = tmp_path / "w1.log"

            async def log_text() -> str:
                return log.read_text() if log.exists() else ""

            await wait_for(
                log_text,
                lambda text: "waiting for Kafka" in text,
                60,
                "the worker to wait for the broker",
            )
            assert h.workers["w1"].poll() is None, log.read_text()[-2000:]
        finally:
            await asyncio.to_thread(devstack.start_kafka, print)
        events = [
            (
                b"z1",
                orjson.dumps(
                    {
                        "type": "order_placed",
                        "order_id": "z-o1",
                        "customer_id": "z1",
                        "occurred_at": T0.isoformat(),
                        "currency": "EUR",
                        "total": 900,
                    }
                ),
            )
        ]
        await h.publish(Stream([], events), {})
        await h.settle()
        table = await read_table(h.settings)
        assert table["default/z1"].state.segment == "new"


def _privacy(kind: str, customer: str, at: datetime) -> tuple[bytes, bytes]:
    event: dict[str, Any] = {"type": kind, "customer_id": customer, "occurred_at": at.isoformat()}
    if kind == "erasure_requested":
        event["request_id"] = f"req-{customer}"
    return customer.encode(), orjson.dumps(event)


async def test_handlers_that_fail_once_or_always(isolated: dict[str, str], tmp_path: Path) -> None:
    """Failures injected into the consent, erasure, save and dead-letter paths: a record that
    fails once is processed at the next attempt; one that always fails is dead-lettered
    (``repeated_failure``) after 5 attempts, and its partition goes on. Nothing is skipped."""
    stream = make_stream()
    # the order that can never be saved: its customer's other orders all count
    poison = next(
        (i, orjson.loads(v))
        for i, (k, v) in enumerate(stream.records)
        if i > len(stream.records) // 3
        and i not in stream.bad_at
        and orjson.loads(v)["type"] == "order_placed"
    )
    _, poison_order = poison
    for i, (_key, value) in enumerate(stream.records):  # the webshop may have sent it twice
        if i not in stream.bad_at:
            event = orjson.loads(value)
            if (event["type"], event["order_id"]) == ("order_placed", poison_order["order_id"]):
                stream.bad_at.add(i)
    stream.events = [
        e
        for e in stream.events
        if (e["customer_id"], e["order_id"])
        != (poison_order["customer_id"], poison_order["order_id"])
    ]
    customers = sorted({e["customer_id"] for e in stream.events})
    granted, stubborn_consent = customers[3:6], customers[6]
    erased, stubborn_erasure = customers[10:12], customers[12]
    stream.erased = set(erased)
    injected = {
        "once": ["on_consent", "on_erasure", "save", "dead_letter"],
        "once_customers_ending": ["7"],
        "always": {
            "on_consent": [stubborn_consent],
            "on_erasure": [stubborn_erasure],
            "save": [poison_order["order_id"]],
        },
    }
    at = T0 + timedelta(days=200)
    async with Harness(isolated, tmp_path) as h:
        h.start("w1", injected)

        async def privacy_requests() -> None:
            consent = [_privacy("consent_granted", c, at) for c in [*granted, stubborn_consent]]
            await h.send(h.settings.consent_topic, consent, {len(consent) - 1})
            erasure = [_privacy("erasure_requested", c, at) for c in [*erased, stubborn_erasure]]
            await h.send(h.settings.erasure_topic, erasure, {len(erasure) - 1})

        await h.publish(stream, {5: privacy_requests})
        await h.settle(h.settings.consent_topic, h.settings.erasure_topic)
        assert h.workers["w1"].poll() is None  # it never stopped
        await h.verify("handlers failing once / always", stream, None)
        log = (tmp_path / "w1.log").read_text()
        assert log.count("fails once") >= 4  # the injections happened
        table = await read_table(h.settings)
        assert all(table[f"default/{c}"].state.consent == "granted" for c in granted)
        assert table[f"default/{stubborn_consent}"].state.consent is None
        assert f"default/{stubborn_erasure}" in table  # its erasure was dead-lettered


async def test_privacy_requests_interleaved_with_kill_9(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """Consent grants and erasures arrive while the worker is killed three times: the erased
    customers are gone from the tables and Redis, the others end as a batch recomputation."""
    stream = make_stream()
    customers = sorted({e["customer_id"] for e in stream.events})
    first, second = customers[20:23], customers[40:43]
    stream.erased = {first[0], second[0]}
    at = T0 + timedelta(days=200)
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")

        def requests_then_kill(group: list[str]) -> Any:
            async def run() -> None:
                grants = [_privacy("consent_granted", c, at) for c in group[1:]]
                await h.send(h.settings.consent_topic, grants, set())
                await h.send(
                    h.settings.erasure_topic, [_privacy("erasure_requested", group[0], at)], set()
                )
                await asyncio.sleep(0.1)  # while it works through them
                await h.restart_after_kill("w1")

            return run

        async def kill() -> None:
            await asyncio.sleep(0.2)
            await h.restart_after_kill("w1")

        await h.publish(
            stream, {2: requests_then_kill(first), 5: kill, 8: requests_then_kill(second)}
        )
        await h.settle(h.settings.consent_topic, h.settings.erasure_topic)
        await h.verify("consent + erasure, kill -9 x3", stream, None)
        table = await read_table(h.settings)
        granted = [*first[1:], *second[1:]]
        assert all(table[f"default/{c}"].state.consent == "granted" for c in granted)


async def test_kill_9_in_wall_clock_mode(isolated: dict[str, str], tmp_path: Path) -> None:
    """The wall clock (time-caused moves at the machine's time) under kill -9 rounds."""
    rng = random.Random(5)
    async with Harness(isolated, tmp_path, clock="wall") as h:
        h.start("w1")

        async def kill_soon() -> None:
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await h.restart_after_kill("w1")

        stream = make_stream()
        await h.publish(stream, {2: kill_soon, 6: kill_soon, 9: kill_soon})
        await h.settle()
        await h.verify("kill -9 x3, wall clock", stream, None)


async def test_a_second_worker_on_the_same_data_directory_refuses_to_start(
    isolated: dict[str, str], tmp_path: Path, clean_ids: set[str]
) -> None:
    """A second worker given the first one's data directory exits 1 naming it; the first one
    goes on undisturbed (its live store is not deleted)."""
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")

        async def second() -> None:
            # once the first worker holds the directory (a second started earlier would win it)
            lock = tmp_path / "w1" / LOCK_FILE
            pid = str(h.workers["w1"].pid)

            async def holder() -> str:
                return lock.read_text().strip() if lock.exists() else ""

            await wait_for(holder, lambda held: held == pid, 60, "the first worker's lock")
            h.start("w2", data_dir="w1")
            status = await asyncio.to_thread(h.workers["w2"].wait, 60)
            h.workers.pop("w2")
            assert status == 1
            assert "is in use" in (tmp_path / "w2.log").read_text()

        stream = make_stream()
        await h.publish(stream, {4: second})
        await h.settle()
        await h.verify("second worker, same data directory", stream, clean_ids)


def _hoarder_order(n: int) -> dict[str, Any]:
    """An order within every input limit (1,000 lines of 128-character categories, ~180 KB)
    whose categories are all new to the customer: 8 of them once made a state larger than a
    record may be."""
    lines = [
        {"sku": f"s{i}", "category": f"{n:02d}-{i:04d}-{'c' * 120}", "quantity": 1, "unit_price": 1}
        for i in range(1000)
    ]
    return {
        "type": "order_placed",
        "order_id": f"hoard-{n}",
        "customer_id": "hoarder",
        "occurred_at": (T0 + timedelta(days=10 * n)).isoformat(),
        "currency": "EUR",
        "total": 1000,
        "lines": lines,
    }


async def test_a_poison_customer_and_a_megabyte_record_with_kill_9(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    """On a broker with default limits: a customer whose orders once outgrew a record, and a
    1,000,100-byte input record, mixed into the stream while the worker is killed twice. The
    worker never exits on its own, commits reach the end, the hoarder's orders all count."""
    stream = make_stream()
    hoard = [_hoarder_order(n) for n in range(8)]
    stream.events += hoard
    step = len(stream.records) // 10
    for n, order in enumerate(hoard):  # spread over the stream, after the bad records' places
        at = (n + 1) * step
        stream.records.insert(at, (b"hoarder", orjson.dumps(order)))
        stream.bad_at = {i + 1 if i >= at else i for i in stream.bad_at}
    huge = orjson.dumps({**hoard[0], "order_id": "huge", "lines": [], "note": "x" * 1_000_100})
    middle = len(stream.records) // 2
    stream.records.insert(middle, (b"hoarder", huge))
    stream.bad_at = {i + 1 if i >= middle else i for i in stream.bad_at} | {middle}
    assert len(stream.records[middle][1]) > 1_000_100
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")

        async def kill() -> None:
            await asyncio.sleep(0.2)
            await h.restart_after_kill("w1")

        await h.publish(stream, {3: kill, 7: kill})
        await h.settle()
        assert h.workers["w1"].poll() is None
        await h.verify("poison customer + 1 MB record, kill -9 x2", stream, None)


# -- erasure under faults -------------------------------------------------------------------------

ERASED = 3  # customers erased per scenario


class PersistentRedis:
    """A Redis of the scenario's own that keeps its data across a stop (appendonly), on a free
    port: the shared devstack Redis keeps nothing on disk."""

    def __init__(self, devstack: Devstack, directory: Path) -> None:
        self.binary = devstack.redis_binary()
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        from streams.cli.devstack import redis_options

        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "redis.out").open("ab") as out:
            self.process = subprocess.Popen(
                [self.binary, *redis_options(self.port, self.directory), "--appendonly", "yes"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = aioredis.from_url(self.url)
        try:

            async def answers() -> bool:
                try:
                    return bool(await client.ping())
                except Exception:
                    return False

            await wait_for(answers, bool, 30, "the scenario's Redis")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # flushes its append-only file
            self.process.wait(30)
        self.process = None


async def _request_erasures(settings: Settings, customers: list[str]) -> None:
    """Erasure requests for ``customers``, to every partition (as ``segmenter forget`` sends
    them), without waiting for receipts."""
    producer = AIOKafkaProducer(**kafka_options(settings), acks="all")
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(settings.erasure_topic))
        for customer in customers:
            request = orjson.dumps(
                {
                    "type": "erasure_requested",
                    "request_id": f"fault-{customer}",
                    "customer_id": customer,
                    "occurred_at": (T0 + timedelta(days=500)).isoformat(),
                }
            )
            for partition in partitions:
                await producer.send_and_wait(
                    settings.erasure_topic,
                    key=customer.encode(),
                    value=request,
                    partition=partition,
                )
    finally:
        await producer.stop()


async def _erased_everywhere(
    settings: Settings, name: str, stream: Stream, erased: list[str]
) -> None:
    """The erased customers are in neither the changelog (only tombstones) nor Redis; every
    other customer's Redis copy equals the table."""
    await wait_for(
        lambda: group_lag(settings, settings.erasure_topic),
        lambda lag: bool(lag) and all((p.committed or 0) == p.end for p in lag),
        240,
        "the workers to process every erasure request",
        interval=1.0,
    )
    table = {k: v.state for k, v in (await read_table(settings)).items()}
    mismatches: list[Any] = [("table", c) for c in erased if f"default/{c}" in table]
    mismatches += await _redis_mismatches(settings, table)  # erased: gone from both
    client = aioredis.from_url(settings.redis_url.get_secret_value())
    keys = RedisCache(client, settings.redis_prefix)
    try:
        for customer in erased:
            if await client.exists(keys.customer_key("default", customer)):
                mismatches.append(("redis", customer))
    finally:
        await client.aclose()
    RESULTS.append(
        {
            "scenario": name,
            "orders sent": len(stream.records),
            "mismatches": len(mismatches),
            # erasure requests whose effect is missing (the customer still in the table)
            "records skipped": sum(1 for c in erased if f"default/{c}" in table),
            "duplicate ids delivered": 0,
            "recovery s": 0.0,
        }
    )
    assert mismatches == [], mismatches


async def test_erasure_during_a_redis_outage_then_kill_9(
    isolated: dict[str, str], tmp_path: Path, devstack: Devstack
) -> None:
    """Customers erased while Redis is down, the worker killed (-9) before Redis is back, and
    Redis comes back with its data (appendonly): the next worker removes them from it, from
    the removals stored in the erasures table (Redis's synced markers are there too: no
    resync would)."""
    redis_server = PersistentRedis(devstack, tmp_path / "redis")
    await redis_server.start()
    try:
        async with Harness({**isolated, "redis_url": redis_server.url}, tmp_path) as h:
            h.start("w1")
            stream = make_stream()
            await h.publish(stream, {})
            await h.settle()
            erased = sorted(k.split("/", 1)[1] for k in await read_table(h.settings))[:ERASED]
            redis_server.stop()
            await _request_erasures(h.settings, erased)
            receipts = await wait_for(
                lambda: _receipts(h.settings),
                lambda found: len(found) == ERASED * 2,  # a receipt per partition
                60,
                "the erasure receipts",
            )
            assert all(r["cache_deletion_pending"] for r in receipts)
            await h.stop("w1", signal.SIGKILL)
            await redis_server.start()
            client = aioredis.from_url(redis_server.url)
            keys = RedisCache(client, h.settings.redis_prefix)
            try:  # Redis kept the erased customers
                kept = [await client.exists(keys.customer_key("default", c)) for c in erased]
                assert kept == [1] * ERASED
            finally:
                await client.aclose()
            h.start("w1")
            await h.settle()
            await _erased_everywhere(h.settings, "erasure, Redis down, kill -9", stream, erased)
    finally:
        redis_server.stop()


async def test_erasure_with_the_broker_stopped_then_sigterm(
    isolated: dict[str, str], tmp_path: Path, devstack: Devstack
) -> None:
    """Erasure requests published just before the broker stops: the worker deletes locally and
    cannot get the tombstones acknowledged; it is stopped with SIGTERM meanwhile. Restarted
    with the broker back, the replayed requests find nothing locally and send the tombstones
    all the same: the customers are absent from the changelog and Redis."""
    async with Harness(isolated, tmp_path) as h:
        h.start("w1")
        stream = make_stream()
        await h.publish(stream, {})
        await h.settle()
        erased = sorted(k.split("/", 1)[1] for k in await read_table(h.settings))[:ERASED]
        await _request_erasures(h.settings, erased)
        await asyncio.to_thread(devstack.stop, "kafka", print)
        try:
            await h.stop("w1")  # SIGTERM, with the broker away
        finally:
            await asyncio.to_thread(devstack.start_kafka, print)
        h.start("w1")
        await h.settle()
        await _erased_everywhere(h.settings, "erasure, broker down, SIGTERM", stream, erased)


async def _receipts(settings: Settings) -> list[Any]:
    return [
        orjson.loads(r.value) async for r in read_topic(settings, settings.erasure_receipts_topic)
    ]
