"""The ``segmenter`` command line: an entry point only; the work happens in the modules it calls."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import click
import orjson
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from config.rules import RulesError, load_rules
from config.settings import DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT, Settings
from models.events import order_event_json_schema
from models.privacy import pseudonym
from models.rules import SegmentRules, all_cells, check_rules
from models.scoring import Calibration
from models.state import CustomerState, compute_metrics, state_key
from models.transitions import bootstrap_calibration
from streams.cli.devstack import Devstack, DevstackError
from streams.dlq import DeadLetter, redrive_headers, to_redrive
from streams.redis_cache import RedisCache
from streams.topics import TopicsError

T = TypeVar("T")

console = Console(stderr=True)
out = Console()


def _settings() -> Settings:
    return Settings()


def _devstack(settings: Settings) -> Devstack:
    return Devstack(settings.devstack_dir, DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT)


def progress_bar() -> Progress:
    """The progress bar of long commands (on stderr; also used by the benchmark)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class Commands(click.Group):
    """The commands, with a clear one-line error (no traceback) when what they talk to cannot be
    reached or the configuration is wrong: where they tried, and which setting says so."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ValidationError as exc:
            if exc.title != Settings.__name__:  # a record's, not the settings'
                raise
            raise click.ClickException(f"invalid SEGMENTER_* settings: {exc}") from exc
        except (RulesError, TopicsError) as exc:
            raise click.ClickException(str(exc)) from exc
        except KafkaError as exc:
            raise click.ClickException(_kafka_error(exc)) from exc
        except RedisError as exc:
            raise click.ClickException(_redis_error(exc)) from exc


def _kafka_error(exc: KafkaError) -> str:
    unreachable = isinstance(exc, KafkaConnectionError | KafkaTimeoutError)
    where = Settings().kafka_bootstrap_servers
    return _server_error("Kafka", where, exc, "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS", unreachable)


def _redis_error(exc: RedisError) -> str:
    unreachable = isinstance(exc, RedisConnectionError | RedisTimeoutError)
    url = urlsplit(Settings().redis_url)
    where = f"{url.hostname}:{url.port or 6379}"  # not the URL: it may hold a password
    return _server_error("Redis", where, exc, "SEGMENTER_REDIS_URL", unreachable)


def _server_error(service: str, where: str, exc: Exception, setting: str, unreachable: bool) -> str:
    """What went wrong with ``service`` at ``where``; if it could not be reached, how to fix it."""
    message = f"{service} at {where}: {exc}"
    if unreachable:
        message += (
            "\nIs it running? `segmenter devstack up` starts the local one; "
            f"{setting} names another."
        )
    return message


@click.group(cls=Commands)
def main() -> None:
    """Streaming customer segmentation on Kafka, Faust and Redis."""


@main.command()
@click.option("--clock", type=click.Choice(["wall", "event"]), help="override SEGMENTER_CLOCK")
def worker(clock: str | None) -> None:
    """Run a worker (consumes orders, emits transitions, caches segments)."""
    from streams.worker import run_worker

    settings = _settings()
    if clock:
        settings = settings.model_copy(update={"clock": clock})
    try:
        run_worker(settings)
    except (RulesError, ConnectionError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def devstack() -> None:
    """The local Kafka and Redis (for the demo and the tests)."""


@devstack.command("up")
def devstack_up() -> None:
    """Start Kafka and Redis on loopback (idempotent; waits until both answer)."""
    stack = _devstack(_settings())
    try:
        stack.up(say=console.print)
    except DevstackError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_status(stack)


@devstack.command("down")
def devstack_down() -> None:
    """Stop Kafka and Redis."""
    stack = _devstack(_settings())
    stack.down(say=console.print)
    _print_status(stack)


@devstack.command("status")
def devstack_status() -> None:
    """Report whether Kafka and Redis answer (exit status 1 if either does not)."""
    stack = _devstack(_settings())
    if not _print_status(stack):
        sys.exit(1)


def _print_status(stack: Devstack) -> bool:
    table = Table("service", "address", "state", "pid", "what")
    statuses = stack.status()
    for s in statuses:
        state = "[green]up[/]" if s.running else "[red]down[/]"
        table.add_row(s.name, s.address, state, str(s.pid or "-"), s.detail)
    out.print(table)
    return all(s.running for s in statuses)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def replay(file: Path) -> None:
    """Publish historical orders (JSON lines or CSV) to the orders topic."""
    from streams.cli.replay import ReplayError, count_records, publish, read_records
    from streams.topics import ensure_topics

    settings = _settings()
    try:
        total = count_records(file)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc

    async def run() -> int:
        await ensure_topics(settings)
        with progress_bar() as progress:
            task = progress.add_task(f"replaying {file.name}", total=total)
            return await publish(settings, read_records(file), lambda n: progress.advance(task, n))

    try:
        sent = asyncio.run(run())
    except (ReplayError, ConnectionError) as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"published {sent} records to {settings.orders_topic}")


@main.command()
@click.argument("customer_id")
@click.option("--shop", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="everything stored, as JSON")
def customer(customer_id: str, shop: str, as_json: bool) -> None:
    """Show a customer's current segment (Redis) or, with --json, everything stored."""
    settings = _settings()
    if as_json:
        from streams.changelog import read_table

        ref = _customer_ref(settings, shop, customer_id)
        stored = asyncio.run(read_table(settings)).get(state_key(shop, ref))
        if stored is None:
            raise click.ClickException(f"no state for customer {customer_id!r} in shop {shop!r}")
        loaded = load_rules(settings.rules_file)
        calibrations = _calibrations(settings)
        sys.stdout.write(_state_json(stored.state, loaded, calibrations).decode() + "\n")
        return

    ref = _customer_ref(settings, shop, customer_id)
    fields = _from_cache(settings, lambda cache: cache.read_customer(shop, ref))
    if not fields:
        raise click.ClickException(f"customer {customer_id!r} of shop {shop!r} is not in Redis")
    table = Table("field", "value", title=f"customer {customer_id} ({shop})")
    for name, value in fields.items():
        table.add_row(name, value)
    out.print(table)
    # The figures are those of the customer's last change (an order or a time-caused move).
    out.print(f"figures as of {fields.get('as_of') or '-'}, the customer's last change")


def _from_cache(settings: Settings, read: Callable[[RedisCache], Awaitable[T]]) -> T:
    """Run one read against the Redis cache."""

    async def run() -> T:
        cache = RedisCache.from_url(settings.redis_url, settings.redis_prefix)
        try:
            return await read(cache)
        finally:
            await cache.close()

    return asyncio.run(run())


def _state_json(
    state: CustomerState, rules: SegmentRules, calibrations: dict[str, Calibration]
) -> bytes:
    """A customer's stored state plus the figures derived from it, as JSON."""
    at = state.as_of
    calibration = calibrations.get(state.shop_id) or bootstrap_calibration(rules, state.shop_id)
    body = state.model_dump(mode="json")
    body["category_spend"] = state.category_spend()
    body["metrics"] = (
        compute_metrics(state, at, rules, calibration).model_dump(mode="json") if at else None
    )
    return orjson.dumps(body)


def _calibrations(settings: Settings) -> dict[str, Calibration]:
    from streams.calibrations import read_calibrations

    return asyncio.run(read_calibrations(settings))


@main.command()
def export() -> None:
    """Every customer's current state as JSON lines (read from the table's changelog)."""
    from streams.changelog import read_table

    settings = _settings()
    with progress_bar() as progress:
        task = progress.add_task("reading changelog", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        table = asyncio.run(read_table(settings, advance))
    loaded = load_rules(settings.rules_file)
    calibrations = _calibrations(settings)
    for stored in table.values():
        sys.stdout.write(_state_json(stored.state, loaded, calibrations).decode() + "\n")
    console.print(f"exported {len(table)} customers")


@main.command()
@click.option("--shop", default="default", show_default=True)
def segments(shop: str) -> None:
    """Segment sizes from the Redis cache."""
    settings = _settings()
    names = load_rules(settings.rules_file).segment_names
    sizes = _from_cache(settings, lambda cache: cache.segment_sizes(shop, names))
    table = Table("segment", "customers", title=f"segments of shop {shop}")
    for name, size in sizes.items():
        table.add_row(name, str(size))
    out.print(table)


@main.command()
@click.argument("customer_id")
@click.option("--shop", default="default", show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the receipt")
@click.option("--timeout", default=60.0, show_default=True, help="seconds to wait")
def forget(customer_id: str, shop: str, wait: bool, timeout: float) -> None:
    """Erase everything stored about a customer (right to erasure); prints the receipt."""
    from streams.cli.privacy_requests import request_erasure

    settings = _settings()
    try:
        receipt = asyncio.run(request_erasure(settings, shop, customer_id, wait, timeout))
    except (ConnectionError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.stdout.write(orjson.dumps(receipt).decode() + "\n")


def _customer_ref(settings: Settings, shop: str, customer_id: str) -> str:
    """The id the customer is stored under: its pseudonym when a secret is configured."""
    secret = settings.secret
    return pseudonym(secret, shop, customer_id) if secret else customer_id


@main.group()
def rules() -> None:
    """The segment rule set."""


@rules.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def rules_check(file: Path | None) -> None:
    """Refuse a rule file with unreachable rules or uncovered score combinations."""
    path = file or _settings().rules_file
    try:
        loaded = load_rules(path, check=False)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from exc
    report = check_rules(loaded)
    if not report.ok:
        raise click.ClickException(f"rule set {loaded.version}:\n{report.describe()}")
    out.print(
        f"rule set {loaded.version}: {len(loaded.segments)} segments, every one reachable, "
        f"all {len(all_cells())} score/flag combinations covered"
    )
    if report.unreached:  # quantile mode: a calibration may reach them
        out.print(f"note: {report.unreached_note()}", soft_wrap=True)


@rules.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def rules_show(file: Path | None) -> None:
    """Print a rule file as the worker reads it."""
    try:
        loaded = load_rules(file or _settings().rules_file)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from exc
    out.print_json(loaded.model_dump_json())


@main.command()
@click.option("--shop", default=None, help="only this shop (default: every shop)")
def recalibrate(shop: str | None) -> None:
    """Compute quantile cut-offs from every customer and publish them; workers re-evaluate."""
    from streams.calibrations import recalibrate as run

    settings = _settings()
    loaded = load_rules(settings.rules_file)
    if loaded.scoring.mode != "quantile":
        raise click.ClickException(f"rule set {loaded.version} uses fixed cut-offs")
    published = asyncio.run(run(settings, loaded, datetime.now(UTC), shop))
    if not published:
        which = f"shop {shop!r} does not have" if shop else "no shop has"
        console.print(
            f"nothing published: {which} {loaded.scoring.min_customers} customers with orders "
            "or more (scoring.min_customers); the rule file's cut-offs stay"
        )
        return
    table = Table("shop", "version", "customers", "recency days", "frequency", "monetary")
    for c in published:
        cut = c.cutoffs
        table.add_row(
            c.shop_id,
            c.version,
            str(c.customers),
            str(list(cut.recency_days)),
            str(list(cut.frequency)),
            str(list(cut.monetary)),
        )
    out.print(table)


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

    settings = _settings()
    if redrive and not reasons:
        raise click.ClickException(
            "name the reasons to send back with --reason (a record rejected for its content "
            "would only be rejected again)"
        )

    async def read() -> list[DeadLetter]:
        return [
            DeadLetter.from_record(r)
            async for r in read_topic(settings.kafka_bootstrap_servers, settings.dlq_topic)
        ]

    letters = asyncio.run(read())
    by_reason = Counter(letter.reason for letter in letters)
    selected = [letter for letter in letters if not reasons or letter.reason in reasons]
    if redrive:
        chosen = [
            letter for letter in to_redrive(letters, settings.dlq_topic) if letter.reason in reasons
        ]
        sent, skipped = asyncio.run(_redrive(settings, chosen))
        out.print(f"sent {sent} dead letters back to their topics ({skipped} without a source)")
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
            letter.failed_at[:19],
            letter.reason,
            source + _dash(letter.source_offset),
            (letter.key or b"").decode("utf-8", "replace")[:24],
            letter.message[:120],
        )
    counts = ", ".join(f"{reason} {n}" for reason, n in by_reason.most_common())
    table.caption = f"{len(shown)} of {len(selected)} shown; all {len(letters)}: {counts or '-'}"
    out.print(table)


async def _redrive(settings: Settings, letters: list[DeadLetter]) -> tuple[int, int]:
    """Publish dead letters to their source topics again, each to the partition it came from
    (a clock tick has no key, and a customer's records stay in one partition)."""
    from aiokafka import AIOKafkaProducer

    from streams.clients import started

    producer = await started(
        AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    )
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

    settings = _settings()
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
        async with LagProbe(settings.kafka_bootstrap_servers, settings.app_id) as probe:
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


@main.command()
@click.option("--customers", default=40, show_default=True, help="sample customers")
@click.option("--keep-running", is_flag=True, help="leave the worker running afterwards")
def demo(customers: int, keep_running: bool) -> None:
    """Start the devstack and a worker, replay a sample year of orders, show what happens."""
    from streams.cli.demo import run_demo

    try:
        run_demo(customers=customers, keep_running=keep_running)
    except (DevstackError, ConnectionError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
