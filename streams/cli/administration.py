"""Commands that change what the workers hold or read: replaying orders, erasing a customer,
checking the rule set, recalibrating the scores."""

from __future__ import annotations

import asyncio
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
from rich.table import Table

from config.rules import RulesError, load_rules
from models.rule_check import all_cells, check_rules
from streams.cli.group import console, literal, load_settings, main, out, progress_bar


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def replay(file: Path) -> None:
    """Publish historical orders (JSON lines or CSV) to the orders topic."""
    from streams.cli.replay import ReplayError, count_records, publish, read_records
    from streams.topics import ensure_topics

    settings = load_settings()
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


# The exit status of ``segmenter forget`` when no partition held a state of the customer.
NOTHING_FOUND_EXIT = 3


def _seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """A positive, finite number of seconds (a negative or NaN timeout sent the request, then
    reported at once that no receipt came)."""
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a number of seconds above 0")
    return value


@main.command()
@click.argument("customer_id")
@click.option("--shop", default="default", show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the receipts")
@click.option(
    "--timeout", default=60.0, show_default=True, help="seconds to wait", callback=_seconds
)
def forget(customer_id: str, shop: str, wait: bool, timeout: float) -> None:
    """Erase everything stored about a customer (right to erasure); prints the receipt.

    The request goes to every partition of the erasure topic; the receipt combines theirs.
    Exits 3 when no partition held a state of the customer (nothing stored, a wrong id or
    shop, or erased before)."""
    from streams.cli.privacy_requests import check_request, request_erasure

    problem = check_request(shop, customer_id)
    if problem:
        raise click.UsageError(f"no worker could take this erasure request ({problem}): not sent")
    settings = load_settings()
    try:
        receipt = asyncio.run(request_erasure(settings, shop, customer_id, wait, timeout))
    except (ConnectionError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.stdout.write(orjson.dumps(receipt).decode() + "\n")
    if not wait:
        console.print(f"erasure requested on {receipt['partitions']} partitions")
        return
    pending = (
        "; Redis's copy is removed once Redis answers (the removal is stored)"
        if receipt["cache_deletion_pending"]
        else ""
    )
    if receipt["state_deleted"]:
        console.print(
            f"erased: the customer's state was found and deleted (partition "
            f"{', '.join(map(str, receipt['state_found_on'])) or '?'} of "
            f"{receipt['partitions']}){pending}"
        )
        return
    console.print(
        f"nothing to erase: no partition ({receipt['partitions']}) held a state of customer "
        f"{customer_id!r} of shop {shop!r} (never stored, a wrong id or shop, or erased "
        f"before); their orders arriving later are skipped all the same{pending}"
    )
    sys.exit(NOTHING_FOUND_EXIT)


@main.group()
def rules() -> None:
    """The segment rule set."""


@rules.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def rules_check(file: Path | None) -> None:
    """Refuse a rule file with unreachable rules or uncovered score combinations."""
    path = file or load_settings().rules_file
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
        loaded = load_rules(file or load_settings().rules_file)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from exc
    out.print_json(loaded.model_dump_json())


@main.command()
@click.option("--shop", default=None, help="only this shop (default: every shop)")
def recalibrate(shop: str | None) -> None:
    """Compute quantile cut-offs from every customer and publish them; workers re-evaluate."""
    from streams.calibrations import recalibrate as run

    settings = load_settings()
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
            literal(c.shop_id),
            literal(c.version),
            str(c.customers),
            str(list(cut.recency_days)),
            str(list(cut.frequency)),
            str(list(cut.monetary)),
        )
    out.print(table)
