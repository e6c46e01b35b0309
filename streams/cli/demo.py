"""``segmenter demo``: the whole product on a sample year of orders, in one command."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.table import Table

from config.rules import load_rules
from config.settings import DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT, Settings
from models.routing import marketing_transitions
from streams.calibrations import recalibrate
from streams.changelog import count_records, read_table, read_topic
from streams.cli.devstack import Devstack
from streams.cli.processes import DevstackError, port_open, stop_recorded, wait_until
from streams.cli.replay import publish
from streams.cli.sample_data import sample_events, sample_records
from streams.clients import kafka_options, started
from streams.insights.store import version_key
from streams.lag import group_lag
from streams.redis_cache import RedisCache
from streams.redis_client import connect
from streams.topics import delete_topics, ensure_topics
from streams.worker import spawn_worker, stop_worker

console = Console()
DEMO = {
    "app_id": "segmenter-demo",
    "orders_topic": "demo.orders",
    "transitions_topic": "demo.segment-transitions",
    "dlq_topic": "demo.orders-dlq",
    "consent_topic": "demo.customer-consent",
    "erasure_topic": "demo.customer-erasure",
    "erasure_receipts_topic": "demo.customer-erasure-receipts",
    "redis_prefix": "segmenter-demo:",
    "marketing_topic_prefix": "demo.",
    "clock": "event",
    "partitions": "4",
    "web_port": "0",
    # The sample has a few dozen customers: enough repeat buyers for a prediction model.
    "prediction_min_repeat_buyers": "10",
}
DONE_TIMEOUT_SECONDS = 180.0
# The workers copy their insight totals to Redis every second: settled once unchanged this long.
INSIGHTS_SETTLED_SECONDS = 2.5
FEATURED_CUSTOMER = "c008-lapsing"  # the customer the README follows


def run_demo(customers: int, keep_running: bool) -> None:
    base = Settings()
    stack = Devstack(base.devstack_dir, DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT)
    stack.up(say=console.print)
    data_dir = base.devstack_dir / "demo-data"
    settings = Settings(**DEMO, data_dir=data_dir)  # type: ignore[arg-type]
    marketing = marketing_transitions(load_rules())
    asyncio.run(_reset(settings, marketing))
    shutil.rmtree(data_dir, ignore_errors=True)
    asyncio.run(ensure_topics(settings, marketing))
    log_path = base.devstack_dir / "demo-worker.log"
    console.print(f"starting a worker (event-time clock; log: {log_path}) ...")
    worker = spawn_worker({**DEMO, "data_dir": str(data_dir)}, log_path)
    program = _program()
    try:
        records = list(sample_records(customers))
        console.print(f"replaying {len(records)} order events of {customers} customers over a year")
        asyncio.run(_replay_and_watch(settings, records, worker))
        fixed = asyncio.run(_segment_sizes(settings))
        asyncio.run(_recalibrate(settings))
        asyncio.run(_summary(settings, fixed))
        asyncio.run(_predict(settings))
        featured = _featured_customer(customers)
        if featured:
            look = customer_command(featured, program)
            console.print(f"look at a customer:  {look}", markup=False, soft_wrap=True)
        asyncio.run(_insights_settled(settings))
        url = _start_dashboard(base.devstack_dir, data_dir)
        if url:
            console.print(
                f"the dashboard, with the demo's data:  {url}", markup=False, soft_wrap=True
            )
    finally:
        if keep_running:
            console.print(f"worker left running (pid {worker.pid})")
        else:
            stop_worker(worker)
    console.print(f"the devstack stays up; stop it with: {program} devstack down", highlight=False)


def customer_command(customer_id: str, program: str = "segmenter") -> str:
    """The shell command that shows one of the demo's customers. The demo keeps its own Redis
    keys and topics, so the command names the demo's Redis prefix (and its app id, which
    ``--json`` reads the table's changelog by); the sample's orders are all of the default shop."""
    env = {"SEGMENTER_APP_ID": DEMO["app_id"], "SEGMENTER_REDIS_PREFIX": DEMO["redis_prefix"]}
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return f"{assignments} {shlex.quote(program)} customer {shlex.quote(customer_id)}"


def _featured_customer(customers: int) -> str | None:
    ids = [event["customer_id"] for event in sample_events(customers)]
    return FEATURED_CUSTOMER if FEATURED_CUSTOMER in ids else next(iter(ids), None)


def _program() -> str:
    """How to run this command line again from the same shell: ``segmenter`` when that is on
    the PATH, else the path it was started by (``make demo`` runs ``.venv/bin/segmenter``)."""
    started = sys.argv[0]
    on_path = shutil.which("segmenter")
    if os.path.basename(started) != "segmenter" or (
        on_path and os.path.realpath(on_path) == os.path.realpath(started)
    ):
        return "segmenter"
    return started


async def _reset(settings: Settings, marketing: list[str]) -> None:
    await delete_topics(
        settings,
        [
            settings.orders_topic,
            settings.transitions_topic,
            settings.dlq_topic,
            settings.clock_topic,
            settings.changelog_topic,
            settings.calibrations_topic,
            settings.predictions_topic,
            settings.consent_topic,
            settings.erasure_topic,
            settings.erasure_receipts_topic,
            f"{settings.app_id}-erasures-changelog",
            f"{settings.app_id}-insights-customers-changelog",
            f"{settings.app_id}-insights-totals-changelog",
            *(settings.marketing_topic(name) for name in marketing),
        ],
    )
    client = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
    try:
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


async def _replay_and_watch(settings: Settings, records: list, worker) -> None:  # type: ignore[no-untyped-def,type-arg]
    consumer = AIOKafkaConsumer(
        settings.transitions_topic,
        **kafka_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await started(consumer)
    try:
        sent = await publish(settings, iter(records))
        console.print(f"published {sent} records; transitions as they happen:")
        deadline = time.monotonic() + DONE_TIMEOUT_SECONDS
        seen = 0
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with status {worker.returncode}")
            batches = await consumer.getmany(timeout_ms=500)
            for records_ in batches.values():
                for record in records_:
                    seen += 1
                    _print_transition(orjson.loads(record.value))
            lag = await group_lag(settings)
            if lag and all(p.committed is not None and p.lag == 0 for p in lag) and not batches:
                console.print(f"[bold]worker caught up: {seen} transitions[/]")
                return
        raise TimeoutError(f"the worker did not catch up within {DONE_TIMEOUT_SECONDS:.0f}s")
    finally:
        await consumer.stop()


def _print_transition(t: dict) -> None:  # type: ignore[type-arg]
    cause = t["cause"]["kind"] + (
        f" {t['cause']['order_id']}" if t["cause"].get("order_id") else ""
    )
    if t["type"] == "tag_changed":
        sign = "+" if t["change"] == "added" else "-"
        change = f"{'':>23}    {sign} {t['tag']:<21}"
    elif t["type"] == "churn_risk_changed":
        sign = "!" if t["move"] == "became_likely_churned" else "~"
        label = f"{t['move']} ({t['p_alive']:.2f})"
        change = f"{'':>23}    {sign} {label:<21}"
    else:
        change = f"{t['from_segment'] or '-':>23} -> {t['to_segment'] or '-':<23}"
    console.print(
        f"{t['event_time'][:10]} {t['customer_id']:<14} {change} {cause}",
        highlight=False,
        soft_wrap=True,
    )


async def _recalibrate(settings: Settings) -> None:
    """Quantile cut-offs from the year's customers; the worker re-evaluates everybody."""
    rules = load_rules()
    console.print("[bold]recalibrating[/]: quantile cut-offs over all customers ...")
    before = await read_table(settings)
    published = await recalibrate(settings, rules, datetime.now(UTC))
    for c in published:
        cut = c.cutoffs
        console.print(
            f"calibration {c.version} of shop {c.shop_id} ({c.customers} customers): "
            f"recency days {list(cut.recency_days)}, orders {list(cut.frequency)}, "
            f"spend {list(cut.monetary)}",
            highlight=False,
        )
    versions = {c.shop_id: c.version for c in published}
    deadline = time.monotonic() + DONE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        after = await read_table(settings)
        if all(
            s.state.calibration_version == versions.get(s.state.shop_id) for s in after.values()
        ):
            moved = sum(1 for k, s in after.items() if s.state.segment != before[k].state.segment)
            console.print(f"re-evaluated {len(after)} customers: {moved} changed segment")
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the worker did not re-evaluate the customers in time")


async def _predict(settings: Settings, shown: int = 8) -> None:
    """Fit the shop's prediction model, wait until the worker wrote every customer's
    predictions to Redis, and show some of them, with when P(alive) reached the churn
    threshold."""
    from models.churn import crossing
    from streams.predictions import ShopPredictions, fit_and_publish

    console.print("[bold]predictions[/]: fitting BG/NBD and Gamma-Gamma over all customers ...")
    report = await fit_and_publish(settings, datetime.now(UTC))
    for reason in report.refused.values():
        console.print(f"no model: {reason}", highlight=False, soft_wrap=True)
    if not report.published:
        return
    model = report.published[0]
    bg = model.bgnbd
    console.print(
        f"model {model.version} of shop {model.shop_id}: {model.customers} customers, "
        f"{model.repeat_buyers} repeat buyers; r={bg.r:.3g} alpha={bg.alpha:.3g} "
        f"a={bg.a:.3g} b={bg.b:.3g}",
        highlight=False,
        soft_wrap=True,
    )
    threshold = load_rules().predictions.churn_threshold_for(model.shop_id)
    table = await read_table(settings)
    cache = RedisCache.from_url(
        settings.redis_url.get_secret_value(), settings.redis_prefix, cluster=settings.redis_cluster
    )
    try:
        deadline = time.monotonic() + DONE_TIMEOUT_SECONDS
        while True:
            fields = {
                s.state.customer_id: await cache.read_customer(s.state.shop_id, s.state.customer_id)
                for s in table.values()
                # customers with an order that counts (a cancelled one has no predictions)
                if s.state.shop_id == model.shop_id and s.state.counted_orders()
            }
            if all(f.get("prediction_model") == model.version for f in fields.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not write the predictions in time")
            await asyncio.sleep(0.5)
    finally:
        await cache.close()
    console.print(f"the worker wrote the predictions of {len(fields)} customers to Redis")
    # The refit's churn-risk moves: sent before the Redis writes of the re-evaluation.
    async for record in read_topic(settings, settings.transitions_topic):
        if record.value is not None:
            transition = orjson.loads(record.value)
            if transition["type"] == "churn_risk_changed":
                _print_transition(transition)
    # As of the end of the sample (the shop's event clock), from the table and the model.
    states = [s.state for s in table.values() if s.state.shop_id == model.shop_id]
    now = max(s.as_of for s in states if s.as_of is not None)
    predictions = ShopPredictions.from_settings(settings, {model.shop_id: model})
    rows = Table(
        "customer",
        "p_alive",
        "expected orders (90 d)",
        "predicted CLV",
        f"P(alive) <= {threshold} since",
        title=f"lowest P(alive) on {now.date().isoformat()} (model {model.version})",
    )
    found = [(p, s) for s in states if (p := predictions.predictions(s, now)) is not None]
    for p, state in sorted(found, key=lambda ps: (ps[0].p_alive, ps[1].customer_id))[:shown]:
        crossed = crossing(state, model, threshold)
        rows.add_row(
            state.customer_id,
            f"{p.p_alive:.3f}",
            f"{p.expected_orders:.2f}",
            "-" if p.predicted_clv is None else f"{p.predicted_clv / 100:.2f}",
            crossed.date().isoformat() if crossed and crossed <= now else "-",
        )
    console.print(rows)


async def _segment_sizes(settings: Settings) -> dict[str, int]:
    cache = RedisCache.from_url(
        settings.redis_url.get_secret_value(), settings.redis_prefix, cluster=settings.redis_cluster
    )
    try:
        return await cache.segment_sizes("default", load_rules().segment_names)
    finally:
        await cache.close()


async def _summary(settings: Settings, bootstrap: dict[str, int]) -> None:
    sizes = await _segment_sizes(settings)
    table = Table(
        "segment",
        "bootstrap cut-offs",
        "quantile cut-offs",
        title="customers per segment (from Redis)",
    )
    for name, size in sizes.items():
        table.add_row(name, str(bootstrap.get(name, 0)), str(size))
    console.print(table)
    dlq = await count_records(settings, settings.dlq_topic)
    console.print(f"dead-lettered records on {settings.dlq_topic}: {dlq}")


async def _insights_settled(settings: Settings) -> None:
    """Wait until the insight totals in Redis stop changing (after the worker caught
    up, its last records are still being added up)."""
    client = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
    key = version_key(settings.redis_prefix, "default")
    try:
        last, since = None, time.monotonic()
        deadline = since + DONE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            version = await client.hgetall(key) or None
            if version != last:
                last, since = version, time.monotonic()
            elif version is not None and time.monotonic() - since >= INSIGHTS_SETTLED_SECONDS:
                return
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()


def _start_dashboard(devstack_dir: Path, data_dir: Path) -> str | None:
    """Start ``segmenter api`` on the demo's data (a new token each time; the previous demo's
    API stopped first) and leave it running; its address with the token, or None."""
    pid_file = devstack_dir / "demo-api.pid"
    marker = b"streams.cli\x00api"
    stop_recorded(pid_file, marker, "the previous demo's dashboard", console.print, 10.0, 0.2)
    port = Settings().api_port
    if port_open(port):
        console.print(f"port {port} is taken: no dashboard (set SEGMENTER_API_PORT)")
        return None
    token = secrets.token_urlsafe(24)
    overrides = {**DEMO, "data_dir": str(data_dir), "api_token": token, "api_port": str(port)}
    env = {**os.environ, **{f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()}}
    log = devstack_dir / "demo-api.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "api"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(process.pid))
    try:
        wait_until(lambda: port_open(port), process.pid, 30.0, "the insights API", [log])
    except DevstackError as exc:
        console.print(str(exc), markup=False)
        return None
    console.print(f"dashboard running (pid {process.pid}; log: {log}); it stays up after the demo")
    return f"http://127.0.0.1:{port}/#token={token}"
