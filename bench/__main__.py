"""``python -m bench``: run the benchmark on the devstack and write bench/results.{md,json}."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from bench.run import Options, console, main, write

PHASES = ("throughput", "latency", "lateness", "restart", "scaling")


@click.command()
@click.option("--customers", default=1_000_000, show_default=True, help="customers in the stream")
@click.option("--orders", default=300_000, show_default=True, help="orders of the throughput run")
@click.option("--rate", default=1000, show_default=True, help="offered orders/s (latency)")
@click.option("--latency-seconds", default=20.0, show_default=True)
@click.option(
    "--warmup-seconds",
    default=5.0,
    show_default=True,
    help="the same load before the latency window, not measured",
)
@click.option("--due-customers", default=2000, show_default=True, help="lateness phase")
@click.option(
    "--restart-customers", default=1_000_000, show_default=True, help="customers in the store"
)
@click.option("--partitions", default=4, show_default=True)
@click.option(
    "--scaling-workers", default=2, show_default=True, help="workers of the scaling phase"
)
@click.option(
    "--phase",
    "phases",
    multiple=True,
    type=click.Choice(PHASES),
    help="run only these phases (default: all)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="results file stem (.md and .json)",
)
def cli(
    customers: int,
    orders: int,
    rate: int,
    latency_seconds: float,
    warmup_seconds: float,
    due_customers: int,
    restart_customers: int,
    partitions: int,
    scaling_workers: int,
    phases: tuple[str, ...],
    out: Path,
) -> None:
    """Benchmark the full worker against a raw aiokafka consumer on the devstack."""
    options = Options(
        customers=customers,
        throughput_orders=orders,
        partitions=partitions,
        rate=rate,
        latency_seconds=latency_seconds,
        warmup_seconds=warmup_seconds,
        due_customers=due_customers,
        restart_customers=restart_customers,
        scaling_workers=scaling_workers,
        phases=phases or PHASES,
    )
    results = asyncio.run(main(options))
    text = write(results, out)
    console.print(text)


if __name__ == "__main__":
    cli()
