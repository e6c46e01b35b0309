"""Commands that look at what the workers hold: a customer, every customer, segment sizes,
dead letters (and sending them back), consumer lag, the order schema."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import click
import orjson
from rich.table import Table

from config.rules import load_rules
from config.settings import Settings
from models.events import order_event_json_schema
from models.state import CustomerState, compute_metrics, state_key
from streams.cli.group import console, literal, load_settings, main, out, progress_bar
from streams.dlq import DeadLetter, redrive_headers, to_redrive
from streams.redis_cache import RedisCache
from streams.shop_models import Privacy, ShopModels

if TYPE_CHECKING:
    from streams.predictions import ShopPredictions

T = TypeVar("T")


@main.command()
@click.argument("customer_id")
@click.option("--shop", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="everything stored, as JSON")
def customer(customer_id: str, shop: str, as_json: bool) -> None:
    """Show a customer's current segment (Redis) or, with --json, everything stored."""
    settings = load_settings()
    if as_json:
        from streams.changelog import read_table

        ref = _customer_ref(settings, shop, customer_id)
        stored = asyncio.run(read_table(settings)).get(state_key(shop, ref))
        if stored is None:
            raise click.ClickException(f"no state for customer {customer_id!r} in shop {shop!r}")
        predictions = _predictions(settings)
        body = _state_json(stored.state, _shop_models(settings), predictions)
        sys.stdout.write(body.decode() + "\n")
        return

    ref = _customer_ref(settings, shop, customer_id)
    fields = _from_cache(settings, lambda cache: cache.read_customer(shop, ref))
    if not fields:
        raise click.ClickException(f"customer {customer_id!r} of shop {shop!r} is not in Redis")
    table = Table("field", "value", title=literal(f"customer {customer_id} ({shop})"))
    for name, value in fields.items():
        table.add_row(literal(name), literal(value))
    out.print(table)
    # The figures are those of the customer's last change (an order or a time-caused move).
    out.print(literal(f"figures as of {fields.get('as_of') or '-'}, the customer's last change"))


def _from_cache(settings: Settings, read: Callable[[RedisCache], Awaitable[T]]) -> T:
    """Run one read against the Redis cache."""

    async def run() -> T:
        cache = RedisCache.from_url(
            settings.redis_url.get_secret_value(),
            settings.redis_prefix,
            cluster=settings.redis_cluster,
        )
        try:
            return await read(cache)
        finally:
            await cache.close()

    return asyncio.run(run())


def _state_json(
    state: CustomerState, models: ShopModels, predictions: Predictions | None = None
) -> bytes:
    """A customer's stored state plus the figures derived from it, as JSON: scored with the
    calibration the worker uses for the shop (a published one only in quantile mode), and
    predicted with the shop's published prediction model (null without one)."""
    at = state.as_of
    model = models.model_for(state.shop_id)
    body = state.model_dump(mode="json")
    body["category_spend"] = state.category_spend()
    body["metrics"] = (
        compute_metrics(state, at, model.rules, model.calibration).model_dump(mode="json")
        if at
        else None
    )
    body["predictions"] = None
    if at is not None and predictions is not None:
        shop_predictions, now = predictions
        # Wall clock: as of now (P(alive) falls as time passes); event clock: as of the
        # customer's latest instant.
        instant = max(now, at) if now is not None else at
        found = shop_predictions.predictions(state, instant)
        if found is not None:
            body["predictions"] = {
                "at": instant.isoformat(),
                "p_alive": found.p_alive,
                "expected_orders_90d": found.expected_orders,
                "predicted_clv": found.predicted_clv,
                "model_version": found.model_version,
            }
    return orjson.dumps(body)


# The shops' prediction models, and the instant to predict at (None: each state's own).
Predictions = tuple["ShopPredictions", datetime | None]


def _predictions(settings: Settings) -> Predictions:
    """The published prediction models, as a worker with these settings adopts them."""
    from streams.predictions import ShopPredictions, read_models

    models = ShopPredictions.from_settings(settings, asyncio.run(read_models(settings)))
    return models, datetime.now(UTC) if settings.clock == "wall" else None


def _shop_models(settings: Settings) -> ShopModels:
    """The shops' models as a worker with these settings has them."""
    from streams.calibrations import read_calibrations

    calibrations = asyncio.run(read_calibrations(settings))
    return ShopModels(load_rules(settings.rules_file), calibrations)


@main.command()
def export() -> None:
    """Every customer's current state as JSON lines (read from the table's changelog)."""
    from streams.changelog import read_table

    settings = load_settings()
    with progress_bar() as progress:
        task = progress.add_task("reading changelog", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        table = asyncio.run(read_table(settings, advance))
    models = _shop_models(settings)
    predictions = _predictions(settings)
    for stored in table.values():
        sys.stdout.write(_state_json(stored.state, models, predictions).decode() + "\n")
    console.print(f"exported {len(table)} customers")


@main.command()
@click.option("--shop", default="default", show_default=True)
def segments(shop: str) -> None:
    """Segment sizes from the Redis cache."""
    settings = load_settings()
    names = load_rules(settings.rules_file).segment_names
    sizes = _from_cache(settings, lambda cache: cache.segment_sizes(shop, names))
    table = Table("segment", "customers", title=literal(f"segments of shop {shop}"))
    for name, size in sizes.items():
        table.add_row(name, str(size))
    out.print(table)


def _customer_ref(settings: Settings, shop: str, customer_id: str) -> str:
    """The id the customer is stored under (the worker's privacy policy)."""
    return Privacy(secret=settings.secret).stored_id(shop, customer_id)


@main.command("dead-letters")
@click.option("--reason", "reasons", multiple=True, help="only this reason (repeatable)")
@click.option("--limit", default=20, show_default=True, help="show the newest N (0: all)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter")
@click.option(
    "--redrive",
    is_flag=True,
    help="send every dead letter of the --reason(s) back to its source topic, to be processed "
    "again once its cause is fixed (orders are idempotent: one processed before changes nothing)",
)
def dead_letters(reasons: tuple[str, ...], limit: int, as_json: bool, redrive: bool) -> None:
    """What the worker rejected: why, from where, and the record; or send it back."""
    from collections import Counter

    from streams.changelog import read_topic

    settings = load_settings()
    if redrive and not reasons:
        raise click.ClickException(
            "name the reasons to send back with --reason (a record rejected for its content "
            "would only be rejected again)"
        )

    async def read() -> list[DeadLetter]:
        return [DeadLetter.from_record(r) async for r in read_topic(settings, settings.dlq_topic)]

    letters = asyncio.run(read())
    by_reason = Counter(letter.reason for letter in letters)
    selected = [letter for letter in letters if not reasons or letter.reason in reasons]
    if redrive:
        chosen = [
            letter for letter in to_redrive(letters, settings.dlq_topic) if letter.reason in reasons
        ]
        sent, skipped = asyncio.run(_redrive(settings, chosen))
        truncated = sum(1 for x in letters if x.reason in reasons and x.truncated_from is not None)
        out.print(
            f"sent {sent} dead letters back to their topics ({skipped} without a source; "
            f"{truncated} kept truncated, which cannot be sent back whole)"
        )
        return
    selected.sort(key=lambda letter: letter.failed_at)
    shown = selected[-limit:] if limit else selected
    if as_json:
        for letter in shown:
            sys.stdout.write(orjson.dumps(letter.as_json()).decode() + "\n")
        return
    table = Table("failed at", "reason", "from", "key", "message", title=settings.dlq_topic)
    for letter in shown:
        source = f"{letter.source_topic}[{_dash(letter.source_partition)}]@"
        table.add_row(
            literal(letter.failed_at[:19]),
            literal(letter.reason),
            literal(source + _dash(letter.source_offset)),
            literal((letter.key or b"").decode("utf-8", "replace")[:24]),
            literal(letter.message[:120]),
        )
    counts = ", ".join(f"{reason} {n}" for reason, n in by_reason.most_common())
    table.caption = literal(
        f"{len(shown)} of {len(selected)} shown; all {len(letters)}: {counts or '-'}"
    )
    out.print(table)


async def _redrive(settings: Settings, letters: list[DeadLetter]) -> tuple[int, int]:
    """Publish dead letters to their source topics again, each to the partition it came from
    (a clock tick has no key, and a customer's records stay in one partition)."""
    from aiokafka import AIOKafkaProducer

    from streams.clients import kafka_options, started

    producer = await started(AIOKafkaProducer(**kafka_options(settings), acks="all"))
    sent = skipped = 0
    try:
        pending = []
        for letter in letters:
            if not letter.source_topic:
                skipped += 1
                continue
            pending.append(
                await producer.send(
                    letter.source_topic,
                    key=letter.key,
                    value=letter.value,
                    partition=letter.source_partition,
                    headers=redrive_headers(letter, settings.dlq_topic),
                )
            )
            sent += 1
        for delivery in pending:
            await delivery
    finally:
        await producer.stop()
    return sent, skipped


@main.command()
@click.option("--topic", default=None, help="input topic (default: the orders topic)")
@click.option("--watch", is_flag=True, help="refresh until interrupted")
@click.option("--interval", default=2.0, show_default=True, help="seconds between refreshes")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per partition")
def lag(topic: str | None, watch: bool, interval: float, as_json: bool) -> None:
    """Consumer lag of the worker group per partition, from the broker."""
    from rich.live import Live

    from streams.lag import LagProbe, PartitionLag

    settings = load_settings()
    topic = topic or settings.orders_topic

    def render(lags: list[PartitionLag]) -> Table:
        table = Table(
            "topic",
            "partition",
            "committed",
            "log end",
            "lag",
            "oldest unprocessed",
            title=f"group {settings.app_id}",
        )
        for p in lags:
            age = f"{p.age_seconds:.1f} s" if p.age_seconds is not None else "-"
            table.add_row(
                p.topic, str(p.partition), _dash(p.committed), str(p.end), _dash(p.lag), age
            )
        total = sum(p.lag or 0 for p in lags)
        table.caption = f"total lag: {total}"
        return table

    async def run() -> None:
        async with LagProbe(settings) as probe:
            partitions = await probe.partitions(topic)
            if not partitions:
                raise click.ClickException(f"topic {topic!r} does not exist")
            lags = await probe.measure(partitions, with_age=True)
            if as_json:
                for p in lags:
                    line = {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "end": p.end,
                        "lag": p.lag,
                        "age_seconds": p.age_seconds,
                    }
                    sys.stdout.write(orjson.dumps(line).decode() + "\n")
                return
            if not watch:
                out.print(render(lags))
                return
            with Live(render(lags), console=out, refresh_per_second=4) as live:
                while True:
                    await asyncio.sleep(interval)
                    live.update(render(await probe.measure(partitions, with_age=True)))

    with contextlib.suppress(KeyboardInterrupt):  # --watch ends with Ctrl-C
        asyncio.run(run())


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the order events on the orders topic."""
    sys.stdout.write(orjson.dumps(order_event_json_schema(), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
