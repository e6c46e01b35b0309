"""The benchmark: the full worker against a raw-client baseline, devstack Kafka and Redis.

Phases (each on topics, consumer groups and Redis keys of its own):

1. throughput: publish a prefix of the generated stream, then let the raw baseline and the full
   worker (event-time mode, RocksDB, changelog, transitions, Redis) each process all of it from
   the beginning; the baseline runs before and after the worker and its mean is the reference;
2. latency: a worker in wall-clock mode, orders of new customers offered at a fixed rate; for
   each order, published -> its transition consumed and its Redis hash written (keyspace
   notifications);
3. lateness: orders placed so that the customers turn inactive within the next seconds; how
   long after its due instant each time-caused transition is emitted and seen;
4. restart: a changelog with a million customers; a worker recovers it into RocksDB (cold),
   is stopped, and started again on the same store (warm): time until ``/readyz`` answers 200;
5. scaling: the throughput run's records again, for several workers of one group: once every
   worker is ready (the partitions shared out), their fetching is paused, the records
   published, and fetching resumed in all at once; their combined rate, against the single
   worker's of the throughput phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis
from rich.console import Console

from bench.core import fold_prefix
from bench.data import StreamSpec, order_stream
from bench.peers import run_quix
from bench.raw import run_raw
from bench.store import create_compacted_topic, fill_changelog
from config.settings import DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT, Settings
from models.state import MAX_STATE_BYTES
from streams.changelog import read_latest
from streams.cli.devstack import Devstack
from streams.cli.group import progress_bar
from streams.codecs import ORDER_TYPES
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker

ROOT = Path(__file__).resolve().parents[1]
FLOOR_TIMEOUT_SECONDS = 900
console = Console(stderr=True)

# The benchmark's workers pause and resume on its word.
ADMIN_TOKEN = "bench-admin-token-0123456789"


@dataclass(frozen=True)
class Options:
    customers: int = 1_000_000
    throughput_orders: int = 300_000
    partitions: int = 4
    rate: int = 1000
    latency_seconds: float = 20.0
    # The same load, offered before the measured window: the worker's first sends (topic
    # metadata, the Redis script) and its first Redis resynchronisation happen in it.
    warmup_seconds: float = 5.0
    due_customers: int = 2000
    restart_customers: int = 1_000_000
    scaling_workers: int = 2
    phases: tuple[str, ...] = ("throughput", "latency", "lateness", "restart", "scaling")
    workdir: Path = ROOT / ".bench"


@dataclass
class Results:
    machine: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    with contextlib.suppress(ValueError, OSError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).date().isoformat(),
    }


class Run:
    """One benchmark run: the devstack, a unique id, and helpers to run workers."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.uid = uuid.uuid4().hex[:8]
        self.stack = Devstack(ROOT / ".devstack", DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT)
        self.bootstrap = f"127.0.0.1:{DEVSTACK_KAFKA_PORT}"
        self.redis_url = f"redis://127.0.0.1:{DEVSTACK_REDIS_PORT}/0"
        self.results = Results(machine=machine(), options=_jsonable(asdict(options)))

    def overrides(self, phase: str, **extra: str) -> dict[str, str]:
        name = f"bench-{self.uid}-{phase}"
        base = {
            "app_id": name,
            "orders_topic": f"{name}.orders",
            "transitions_topic": f"{name}.segment-transitions",
            "dlq_topic": f"{name}.orders-dlq",
            "consent_topic": f"{name}.customer-consent",
            "erasure_topic": f"{name}.customer-erasure",
            "erasure_receipts_topic": f"{name}.customer-erasure-receipts",
            "marketing_topic_prefix": f"{name}.",
            "redis_prefix": f"{name}:",
            "data_dir": str(self.options.workdir / name),
            "partitions": str(self.options.partitions),
            "web_port": str(_free_port()),
            "admin_token": ADMIN_TOKEN,
            "log_level": "warning",
            "kafka_bootstrap_servers": self.bootstrap,
            "redis_url": self.redis_url,
        }
        return {**base, **extra}

    async def publish(self, topic: str, records: Iterator[tuple[bytes, bytes]], total: int) -> int:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
        )
        await producer.start()
        sent = 0
        try:
            with progress_bar() as bar:
                task = bar.add_task(f"publishing to {topic}", total=total)
                pending = []
                for key, value in records:
                    pending.append(await producer.send(topic, key=key, value=value))
                    if len(pending) >= 5000:
                        await asyncio.gather(*pending)
                        bar.advance(task, len(pending))
                        sent += len(pending)
                        pending = []
                await asyncio.gather(*pending)
                sent += len(pending)
                bar.advance(task, len(pending))
        finally:
            await producer.stop()
        return sent


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _http_json(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"http://127.0.0.1:{port}{path}",
            timeout=aiohttp.ClientTimeout(5),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


async def _wait(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = exc
        if done(last):
            return last
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


async def _ready(port: int, timeout: float) -> float:
    """Seconds until the worker's /readyz answers 200."""
    started = time.monotonic()
    await _wait(
        lambda: _http_json(port, "/readyz"),
        lambda r: isinstance(r, tuple) and r[0] == 200,
        timeout,
        "the worker to be ready",
    )
    return time.monotonic() - started


def _rss_mib(pid: int) -> dict[str, float]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = round(int(value.split()[0]) / 1024, 1)
    return figures


def _table_bytes(data_dir: Path, table: str = "customers") -> int:
    """Bytes on disk of the RocksDB stores of one table (all partitions)."""
    total = 0
    for path in data_dir.rglob("*"):
        if path.is_file() and any(f"{table}-" in part for part in path.parts):
            total += path.stat().st_size
    return total


async def _metric(port: int, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(5)) as r,
    ):
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"metric {name} not found")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- phase 1: throughput --------------------------------------------------------------------------


async def throughput(run: Run) -> None:
    o = run.options
    overrides = run.overrides("throughput", clock="event")
    settings = Settings(**overrides)  # type: ignore[arg-type]
    await ensure_topics(settings)
    sent = await run.publish(settings.orders_topic, throughput_orders(o), o.throughput_orders)
    raw_topic = f"{settings.app_id}.raw-out"
    await create_compacted_topic(run.bootstrap, raw_topic, o.partitions)

    async def raw() -> float:
        with console.status("raw aiokafka baseline ..."):
            count, seconds = await run_raw(run.bootstrap, settings.orders_topic, raw_topic, sent)
        console.print(f"raw baseline: {count} records in {seconds:.1f} s")
        return count / seconds

    raw_before = await raw()
    worker_rate, rss, customers, seconds = await _worker_throughput(run, overrides, sent)
    raw_after = await raw()
    floor_rate = await _floor(run, settings.orders_topic, raw_topic, sent)
    events_floor_rate = await _floor(run, settings.orders_topic, raw_topic, sent, "events")
    with (
        console.status("the product's fold alone, in process ..."),
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        folded, core_seconds = await asyncio.get_running_loop().run_in_executor(
            pool, fold_prefix, o.customers, sent
        )
    core_rate = folded / core_seconds
    console.print(f"fold alone: {folded} records in {core_seconds:.1f} s")
    with console.status("the Quix Streams peer (bench/quix_peer.py) ..."):
        quix, quix_seconds = await run_quix(
            o.workdir,
            f"bench-{run.uid}-quix",
            run.bootstrap,
            settings.orders_topic,
            f"bench-{run.uid}-quix-transitions",
            sent,
            urlparse(run.redis_url).port or DEVSTACK_REDIS_PORT,
        )
    quix_rate = quix / quix_seconds
    console.print(f"Quix Streams peer: {quix} records in {quix_seconds:.1f} s")
    baseline = (raw_before + raw_after) / 2
    data_dir = Path(overrides["data_dir"])
    disk = _table_bytes(data_dir)
    sizes = await _state_sizes(settings)
    run.results.figures["throughput"] = {
        "orders": sent,
        "customers": customers,
        "raw_orders_per_s": [round(raw_before), round(raw_after)],
        "worker_orders_per_s": round(worker_rate),
        "worker_seconds": round(seconds, 1),
        "ratio": round(worker_rate / baseline, 4),
        "floor_orders_per_s": round(floor_rate),
        "floor_ratio": round(floor_rate / baseline, 4),
        "floor_events_orders_per_s": round(events_floor_rate),
        "floor_events_ratio": round(events_floor_rate / baseline, 4),
        "core_orders_per_s": round(core_rate),
        "core_ratio": round(core_rate / baseline, 4),
        "quix_orders_per_s": round(quix_rate),
        "quix_ratio": round(quix_rate / baseline, 4),
        "worker_vs_quix": round(worker_rate / quix_rate, 3),
        "worker_rss_mib": rss,
        "state_bytes_on_disk": disk,
        "state_bytes_per_customer": round(disk / customers, 1) if customers else None,
        **sizes,
    }


async def _state_sizes(settings: Settings) -> dict[str, Any]:
    """The sizes of the stored states (table values as the changelog holds them) after the
    throughput run: median, p99 and largest, in bytes, and the bound no state can exceed."""
    with console.status("reading the stored states from the changelog ..."):
        sizes = [len(value) for value in (await read_latest(settings)).values()]
    return {
        "stored_states": len(sizes),
        "state_bytes_median": _percentile([float(n) for n in sizes], 0.5),
        "state_bytes_p99": _percentile([float(n) for n in sizes], 0.99),
        "state_bytes_max": max(sizes, default=0),
        "state_bytes_bound": MAX_STATE_BYTES,
    }


def throughput_orders(o: Options) -> Iterator[tuple[bytes, bytes]]:
    """The records of the throughput run (and of the scaling run)."""
    return _prefix(order_stream(StreamSpec(customers=o.customers)), o.throughput_orders)


async def _floor(
    run: Run, topic: str, out_topic: str, expected: int, mode: str = "buffered"
) -> float:
    """The raw baseline's work done by a Faust agent (bench.floor), in its own process:
    ``buffered`` takes the records as the worker does, ``events`` as Faust's streams do."""
    name = f"bench-{run.uid}-floor-{mode}"
    data_dir = run.options.workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    result = data_dir / "result.json"
    log = run.options.workdir / f"{name}.log"
    with console.status("Faust agent doing the baseline's work ..."), log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floor",
            run.bootstrap,
            topic,
            out_topic,
            str(expected),
            str(run.options.partitions),
            str(data_dir),
            str(result),
            mode,
            stdout=out,
            stderr=out,
            cwd=ROOT,
        )
        try:
            code = await asyncio.wait_for(process.wait(), FLOOR_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"the Faust floor did not finish within {FLOOR_TIMEOUT_SECONDS} s; see {log}"
            ) from None
    if code != 0 or not result.exists():
        raise RuntimeError(f"the Faust floor failed (exit {code}); see {log}")
    figures = orjson.loads(result.read_bytes())
    records, seconds = figures["records"], figures["seconds"]
    console.print(f"Faust floor ({mode}): {records} records in {seconds:.1f} s")
    return float(figures["records"] / figures["seconds"])


def _prefix(records: Iterator[tuple[bytes, bytes]], count: int) -> Iterator[tuple[bytes, bytes]]:
    for n, record in enumerate(records):
        if n >= count:
            return
        yield record


async def _worker_throughput(
    run: Run, overrides: dict[str, str], expected: int
) -> tuple[float, dict[str, float], int, float]:
    workdir = run.options.workdir
    process = spawn_worker(overrides, workdir / f"{overrides['app_id']}.log")
    port = int(overrides["web_port"])
    try:
        rate, seconds = await sustained_rate([(process, port)], expected, "full worker")
        rss = _rss_mib(process.pid)
        customers = int(await _metric(port, "segmenter_table_customers"))
        return rate, rss, customers, seconds
    finally:
        stop_worker(process)


async def _processed(port: int) -> int:
    """Records a worker has processed since it started: orders and dead letters."""
    _, stats = await _http_json(port, "/stats")
    events = stats["events"]  # also counts transitions: only the orders' types
    return sum(events.get(t, 0) for t in ORDER_TYPES) + sum(stats["dead_letters"].values())


async def sustained_rate(
    workers: list[tuple[subprocess.Popen[bytes], int]], expected: int, what: str
) -> tuple[float, float]:
    """Wait until the workers (process, web port) have processed ``expected`` records between
    them: (records/s from the first sample with progress to the end, seconds)."""
    samples: list[tuple[float, int]] = []
    with progress_bar() as bar:
        task = bar.add_task(what, total=expected)

        async def probe() -> int:
            for process, _ in workers:
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited with {process.returncode}")
            count = sum(await asyncio.gather(*(_processed(port) for _, port in workers)))
            samples.append((time.monotonic(), count))
            bar.update(task, completed=count)
            return count

        await _wait(
            probe, lambda c: isinstance(c, int) and c >= expected, 3600, f"{what} to process all"
        )
    first = next(i for i, (_, c) in enumerate(samples) if c > 0)
    start_t, start_c = samples[max(first - 1, 0)]
    end_t, end_c = samples[-1]
    return (end_c - start_c) / (end_t - start_t), end_t - start_t


# -- phase 2: latency at a fixed offered load -----------------------------------------------------


class Watcher:
    """First arrival time, per customer, of their transitions and of their Redis hash writes."""

    def __init__(self, run: Run, settings: Settings) -> None:
        self.run = run
        self.settings = settings
        self.transitions: dict[str, float] = {}
        self.time_caused: list[dict[str, Any]] = []
        self.redis: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            self.settings.transitions_topic,
            bootstrap_servers=self.run.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=5,
        )
        await self.consumer.start()
        self.redis_client = Redis.from_url(self.run.redis_url)
        self.old_notify = (await self.redis_client.config_get("notify-keyspace-events")).get(
            "notify-keyspace-events", ""
        )
        await self.redis_client.config_set("notify-keyspace-events", "Kh")
        self.pubsub = self.redis_client.pubsub()
        prefix = f"__keyspace@0__:{self.settings.redis_prefix}"
        await self.pubsub.psubscribe(prefix + "*")  # then customers' hashes: <tag>:customer:<id>
        self._prefix = prefix
        self._tasks = [
            asyncio.create_task(self._transitions()),
            asyncio.create_task(self._redis()),
        ]

    async def _transitions(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=50)
            now = time.time()
            for messages in batches.values():
                for message in messages:
                    body = orjson.loads(message.value)
                    self.transitions.setdefault(body["customer_id"], now)
                    if body["cause"]["kind"] == "time":
                        self.time_caused.append({**body, "seen_at": now})

    async def _redis(self) -> None:
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            now = time.time()
            kind, _, customer = customer_of(message["channel"].decode())
            if customer and kind == "customer":
                self.redis.setdefault(customer, now)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.consumer.stop()
        await self.redis_client.config_set("notify-keyspace-events", self.old_notify)
        await self.pubsub.aclose()
        await self.redis_client.aclose()


def customer_of(channel: str) -> tuple[str, str, str]:
    """(``customer``, ``:``, customer id) of the keyspace channel of a customer's hash
    (``__keyspace@0__:<prefix>{<shop>:<bucket>}:customer:<id>``); another key gives another
    kind."""
    return channel.rpartition("}:")[2].partition(":")


def _live_order(customer: str, at: datetime, total: int = 4200) -> bytes:
    return orjson.dumps(
        {
            "type": "order_placed",
            "shop_id": "shop-nl",
            "order_id": f"{customer}-1",
            "customer_id": customer,
            "occurred_at": at.isoformat(),
            "currency": "EUR",
            "total": total,
            "discount": 0,
            "lines": [{"sku": "shoes-1", "category": "shoes", "quantity": 1, "unit_price": total}],
        }
    )


async def live(run: Run) -> None:
    """Phases 2 and 3 share one wall-clock worker."""
    o = run.options
    overrides = run.overrides("live", clock="wall", backfill="false")
    settings = Settings(**overrides)  # type: ignore[arg-type]
    process = spawn_worker(overrides, o.workdir / f"{settings.app_id}.log")
    try:
        await _ready(int(overrides["web_port"]), 120)
        watcher = Watcher(run, settings)
        await watcher.start()
        producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, acks=1)
        await producer.start()
        try:
            if "latency" in o.phases:
                await _latency(run, settings, producer, watcher)
            if "lateness" in o.phases:
                await _lateness(run, settings, producer, watcher)
            run.results.figures.setdefault("latency", {})["worker_rss_mib"] = _rss_mib(process.pid)
        finally:
            await producer.stop()
            await watcher.stop()
    finally:
        stop_worker(process)


async def _offer(
    run: Run, settings: Settings, producer: AIOKafkaProducer, label: str, seconds: float
) -> tuple[dict[str, float], float]:
    """Offer ``run.options.rate`` new customers' orders per second for ``seconds``; returns
    each customer's send time and the rate achieved."""
    rate = run.options.rate
    sent: dict[str, float] = {}
    ticks_per_s = 100
    per_tick = max(1, rate // ticks_per_s)
    total = int(rate * seconds)
    started = time.monotonic()
    n = 0
    while n < total:
        due = started + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(min(per_tick, total - n)):
            customer = f"{label}-{run.uid}-{n}"
            sent[customer] = time.time()
            await producer.send(
                settings.orders_topic,
                key=customer.encode(),
                value=_live_order(customer, datetime.now(UTC)),
            )
            n += 1
    await producer.flush()
    return sent, n / (time.monotonic() - started)


async def _latency(
    run: Run, settings: Settings, producer: AIOKafkaProducer, watcher: Watcher
) -> None:
    o = run.options
    with console.status(f"warm-up: {o.rate} orders/s for {o.warmup_seconds:.0f} s ..."):
        warmup, _ = await _offer(run, settings, producer, "warm", o.warmup_seconds)
    with console.status(f"offering {o.rate} orders/s for {o.latency_seconds:.0f} s ..."):
        sent, achieved = await _offer(run, settings, producer, "lat", o.latency_seconds)
        await _wait(
            _async(lambda: sum(1 for c in sent if c in watcher.transitions and c in watcher.redis)),
            lambda seen: seen == len(sent),
            120,
            "every transition and Redis write",
        )
    latencies = [
        (max(watcher.transitions[c], watcher.redis[c]) - t) * 1000 for c, t in sent.items()
    ]
    to_topic = [(watcher.transitions[c] - t) * 1000 for c, t in sent.items()]
    to_redis = [(watcher.redis[c] - t) * 1000 for c, t in sent.items()]
    warm = [
        (max(watcher.transitions[c], watcher.redis[c]) - t) * 1000
        for c, t in warmup.items()
        if c in watcher.transitions and c in watcher.redis
    ]
    run.results.figures["latency"] = {
        "offered_per_s": o.rate,
        "achieved_per_s": round(achieved),
        "orders": len(sent),
        "seconds": o.latency_seconds,
        "warmup_seconds": o.warmup_seconds,
        "p50_ms": round(_percentile(latencies, 0.50), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
        "transition_p99_ms": round(_percentile(to_topic, 0.99), 1),
        "redis_p99_ms": round(_percentile(to_redis, 0.99), 1),
        "warmup_p99_ms": round(_percentile(warm, 0.99), 1) if warm else None,
        "warmup_max_ms": round(max(warm), 1) if warm else None,
    }


def _async(read: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def probe() -> Any:
        return read()

    return probe


async def _lateness(
    run: Run, settings: Settings, producer: AIOKafkaProducer, watcher: Watcher
) -> None:
    """Single-order customers turn inactive 90 days after their order: place the orders so
    that the due instants fall 5 to 15 s from now."""
    o = run.options
    now = datetime.now(UTC)
    inactive_after = timedelta(days=90)
    customers = []
    for n in range(o.due_customers):
        customer = f"due-{run.uid}-{n}"
        offset = timedelta(seconds=5 + 10 * n / max(o.due_customers, 1))
        customers.append(customer)
        await producer.send(
            settings.orders_topic,
            key=customer.encode(),
            value=_live_order(customer, now - inactive_after + offset),
        )
    await producer.flush()
    wanted = set(customers)
    with console.status(f"waiting for {len(wanted)} time-caused transitions ..."):
        await _wait(
            _async(lambda: len({t["customer_id"] for t in watcher.time_caused} & wanted)),
            lambda seen: seen == len(wanted),
            120,
            "every time-caused transition",
        )
    emitted, seen = [], []
    for t in watcher.time_caused:
        if t["customer_id"] not in wanted:
            continue
        due = datetime.fromisoformat(t["event_time"])
        emitted.append((datetime.fromisoformat(t["emitted_at"]) - due).total_seconds() * 1000)
        seen.append((t["seen_at"] - due.timestamp()) * 1000)
    run.results.figures["lateness"] = {
        "customers": len(wanted),
        "emitted_p50_ms": round(_percentile(emitted, 0.5), 1),
        "emitted_p99_ms": round(_percentile(emitted, 0.99), 1),
        "emitted_max_ms": round(max(emitted), 1),
        "seen_p99_ms": round(_percentile(seen, 0.99), 1),
    }


# -- phase 4: restart with a million customers ----------------------------------------------------


async def restart(run: Run) -> None:
    o = run.options
    overrides = run.overrides("restart", clock="wall")
    settings = Settings(**overrides)  # type: ignore[arg-type]
    await ensure_topics(settings)
    await fill_changelog(settings, o.restart_customers, run.bootstrap, progress_bar)
    port = int(overrides["web_port"])
    log = o.workdir / f"{settings.app_id}.log"
    process = spawn_worker(overrides, log)
    try:
        with console.status(f"cold start: recovering {o.restart_customers} customers ..."):
            cold = await _ready(port, 1800)
        customers = int(await _metric(port, "segmenter_table_customers"))
        rss = _rss_mib(process.pid)
    finally:
        stop_worker(process, timeout=120)
    disk = _table_bytes(Path(overrides["data_dir"]))
    process = spawn_worker(overrides, log)
    try:
        with console.status("warm restart on the same store ..."):
            warm = await _ready(port, 600)
        warm_customers = int(await _metric(port, "segmenter_table_customers"))
    finally:
        stop_worker(process, timeout=120)
    run.results.figures["restart"] = {
        "customers": customers,
        "cold_recovery_s": round(cold, 1),
        "warm_restart_s": round(warm, 1),
        "customers_after_restart": warm_customers,
        "worker_rss_mib": rss,
        "state_bytes_on_disk": disk,
        "state_bytes_per_customer": round(disk / customers, 1) if customers else None,
    }


# -- phase 5: several workers ---------------------------------------------------------------------


async def scaling(run: Run) -> None:
    o = run.options
    overrides = run.overrides("scaling", clock="event")
    settings = Settings(**overrides)  # type: ignore[arg-type]
    await ensure_topics(settings)
    workers = []
    try:
        for index in range(o.scaling_workers):
            own = {
                **overrides,
                "web_port": str(_free_port()),
                "data_dir": str(o.workdir / f"{overrides['app_id']}-{index}"),
            }
            log = o.workdir / f"{overrides['app_id']}-{index}.log"
            workers.append((spawn_worker(own, log), int(own["web_port"])))
        with console.status(f"{o.scaling_workers} workers joining their group ..."):
            # Ready means recovered and not rebalancing: with every worker ready at once, the
            # partitions are shared out among all of them.
            await _wait(
                lambda: asyncio.gather(*(_http_json(port, "/readyz") for _, port in workers)),
                lambda r: isinstance(r, list) and all(status == 200 for status, _ in r),
                300,
                "every worker to be ready",
            )
            paused = await asyncio.gather(
                *(_http_json(port, "/pause", "POST") for _, port in workers)
            )
        if not all(body.get("paused") for _, body in paused):
            raise RuntimeError(f"pausing the workers failed: {paused}")
        sent = await run.publish(settings.orders_topic, throughput_orders(o), o.throughput_orders)
        resumed = await asyncio.gather(
            *(_http_json(port, "/resume", "POST") for _, port in workers)
        )
        if any(status != 200 for status, _ in resumed):
            raise RuntimeError(f"resuming the workers failed: {resumed}")
        rate, seconds = await sustained_rate(workers, sent, f"{o.scaling_workers} workers")
        shares = await asyncio.gather(*(_processed(port) for _, port in workers))
    finally:
        for process, _ in workers:
            stop_worker(process)
    single = run.results.figures.get("throughput", {}).get("worker_orders_per_s")
    run.results.figures["scaling"] = {
        "workers": o.scaling_workers,
        "orders": sent,
        "orders_per_s": round(rate),
        "seconds": round(seconds, 1),
        "records_per_worker": shares,
        "single_worker_orders_per_s": single,
        "speedup": round(rate / single, 2) if single else None,
    }


# -- report ---------------------------------------------------------------------------------------


async def main(options: Options) -> Results:
    run = Run(options)
    options.workdir.mkdir(parents=True, exist_ok=True)
    run.stack.up(say=console.print)
    try:
        if "throughput" in options.phases:
            await throughput(run)
        if {"latency", "lateness"} & set(options.phases):
            await live(run)
        if "restart" in options.phases:
            await restart(run)
        if "scaling" in options.phases:
            await scaling(run)
    finally:
        await cleanup(run)
    return run.results


async def cleanup(run: Run) -> None:
    """Delete the run's topics, Redis keys and worker stores (a run writes gigabytes)."""
    from aiokafka.admin import AIOKafkaAdminClient

    prefix = f"bench-{run.uid}-"
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap)
    await admin.start()
    try:
        # the Quix peer's changelog topic is "changelog__<its group>--...": the uid is inside
        topics = [t for t in await admin.list_topics() if prefix in t]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    redis = Redis.from_url(run.redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await redis.delete(*keys[start : start + 10_000])
    finally:
        await redis.aclose()
    for path in run.options.workdir.glob(f"{prefix}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    console.print(f"removed {len(topics)} topics, {len(keys)} Redis keys and the worker stores")


def write(results: Results, path: Path) -> str:
    from bench.report import render

    text = render(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(asdict(results), indent=2) + "\n")
    path.with_suffix(".md").write_text(text)
    return text
