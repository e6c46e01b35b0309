"""``python -m bench.compare``: the fold alone (``bench.core``) of git revisions, interleaved;
with ``--worker``, the full worker of each revision on the devstack.

Each revision is exported (``git archive``) into a directory of its own and folds the same
generated records in a process of its own; the revisions take turns, round after round, so a
machine that gets busier or quieter during the comparison weighs on all of them alike. Prints
each revision's orders/s per round, their median and its ratio to the first revision's.
``.`` is the working tree as it is.

``--worker``: the orders are published once to a topic of the devstack (started if it is not
running); in every round each revision's worker (``segmenter worker`` of its tree, a consumer
group, store and Redis prefix of its own) processes all of them from the start, measured as
``make bench`` measures the full worker (orders/s from its first progress to the last record).
The run's topics, Redis keys and stores are removed at the end.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import orjson

ROOT = Path(__file__).resolve().parents[1]
# Run in the revision's own tree: its bench.core, models and streams.
_PROGRAM = (
    "import sys, orjson; from bench.core import fold_prefix; "
    "n, s = fold_prefix(int(sys.argv[1]), int(sys.argv[2])); "
    "print(orjson.dumps({'records': n, 'seconds': s}).decode())"
)


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (``.``: the working tree itself)."""
    if revision == ".":
        return ROOT
    tree = into / revision.replace("/", "_")
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


async def worker_rates(
    trees: dict[str, Path], rounds: int, customers: int, orders: int
) -> dict[str, list[float]]:
    """Orders/s of each tree's full worker per round, on the same published orders."""
    from bench import run as bench_run
    from config.settings import Settings
    from streams.topics import ensure_topics
    from streams.worker import spawn_worker, stop_worker

    options = bench_run.Options(customers=customers, throughput_orders=orders, phases=())
    run = bench_run.Run(options)
    options.workdir.mkdir(parents=True, exist_ok=True)
    run.stack.up(say=bench_run.console.print)
    rates: dict[str, list[float]] = {rev: [] for rev in trees}
    try:
        source = run.overrides("compare", clock="event")
        await ensure_topics(Settings(**source))  # type: ignore[arg-type]
        sent = await run.publish(
            source["orders_topic"], bench_run.throughput_orders(options), orders
        )
        for round_ in range(rounds):
            revisions = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for index, rev in enumerate(revisions):
                own = run.overrides(
                    f"compare-{round_}-{index}", clock="event", orders_topic=source["orders_topic"]
                )
                await ensure_topics(Settings(**own))  # type: ignore[arg-type]
                log = options.workdir / f"{own['app_id']}.log"
                process = spawn_worker(own, log, None if trees[rev] == ROOT else trees[rev])
                try:
                    rate, _seconds = await bench_run.sustained_rate(
                        [(process, int(own["web_port"]))], sent, f"{rev} worker"
                    )
                finally:
                    stop_worker(process)
                rates[rev].append(rate)
                click.echo(f"round {round_ + 1}: {rev}: {rate:,.0f} orders/s", err=True)
    finally:
        await bench_run.cleanup(run)
    return rates


def fold_rate(tree: Path, customers: int, orders: int) -> float:
    """Orders/s of the fold alone of ``tree``, in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(customers), str(orders)],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    figures = orjson.loads(done.stdout.splitlines()[-1])
    return float(figures["records"] / figures["seconds"])


@click.command()
@click.argument("revisions", nargs=-1)
@click.option("--customers", default=1_000_000, show_default=True)
@click.option("--orders", default=100_000, show_default=True, help="records folded per run")
@click.option("--rounds", default=3, show_default=True)
@click.option(
    "--worker",
    is_flag=True,
    help="the full worker of each revision on the devstack, not the fold alone",
)
def cli(revisions: tuple[str, ...], customers: int, orders: int, rounds: int, worker: bool) -> None:
    """Compare the fold alone (or the full worker) of REVISIONS (default: HEAD~1 and the
    working tree)."""
    revisions = revisions or ("HEAD~1", ".")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in revisions}
        if worker:
            rates = asyncio.run(worker_rates(trees, rounds, customers, orders))
            revisions = tuple(trees)
        else:
            rates = _fold_rates(trees, rounds, customers, orders)
    first = statistics.median(rates[revisions[0]])
    for rev in revisions:
        median = statistics.median(rates[rev])
        runs = ", ".join(f"{r:,.0f}" for r in rates[rev])
        click.echo(f"{rev}: median {median:,.0f} orders/s ({runs}); {median / first:.3f}x")


def _fold_rates(
    trees: dict[str, Path], rounds: int, customers: int, orders: int
) -> dict[str, list[float]]:
    """Orders/s of each tree's fold alone per round."""
    rates: dict[str, list[float]] = {rev: [] for rev in trees}
    for round_ in range(rounds):
        # alternate who goes first
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for rev in order:
            rate = fold_rate(trees[rev], customers, orders)
            rates[rev].append(rate)
            click.echo(f"round {round_ + 1}: {rev}: {rate:,.0f} orders/s", err=True)
    return rates


if __name__ == "__main__":
    cli()
