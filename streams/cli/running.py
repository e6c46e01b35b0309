"""Commands that start things: a worker, the local devstack, the demo."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from config.rules import RulesError
from config.settings import DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT, Settings
from streams.cli.devstack import Devstack, DevstackError
from streams.cli.group import console, load_settings, main, out
from streams.cli.secure_kafka import SecureKafka
from streams.cli.secure_redis import SecureRedis
from streams.refusals import KafkaRefused


def _devstack(settings: Settings) -> Devstack:
    return Devstack(settings.devstack_dir, DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT)


@main.command()
@click.option("--clock", type=click.Choice(["wall", "event"]), help="override SEGMENTER_CLOCK")
def worker(clock: str | None) -> None:
    """Run a worker (consumes orders, emits transitions, caches segments)."""
    from streams.worker import run_worker

    settings = load_settings()
    if clock:
        settings = settings.model_copy(update={"clock": clock})
    try:
        run_worker(settings)
    except (RulesError, ConnectionError, KafkaRefused) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def devstack() -> None:
    """The local Kafka and Redis (for the demo and the tests)."""


@devstack.command("up")
@click.option(
    "--secure",
    is_flag=True,
    help="also the secured Kafka (SASL_SSL, SCRAM, ACLs) on 127.0.0.1:19192 and the secured Redis "
    "(a password, an ACL user, TLS) on 127.0.0.1:16390; their client settings are in "
    "<devstack dir>/secure/client.env and <devstack dir>/secure-redis/client.env",
)
def devstack_up(secure: bool) -> None:
    """Start Kafka and Redis on loopback (idempotent; waits until both answer)."""
    stack = _devstack(load_settings())
    try:
        stack.up(say=console.print)
        if secure:
            secured = SecureKafka(stack)
            secured.up(say=console.print)
            console.print(
                f"client settings (the password is not shown): {secured.client_env}; "
                f"`set -a; . {secured.client_env}; set +a` to use them"
            )
            redis_secured = SecureRedis(stack)
            redis_secured.up(say=console.print)
            redis_env = redis_secured.home / "client.env"
            console.print(
                f"the secured Redis's settings (the password is not shown): {redis_env}; "
                f"`set -a; . {redis_env}; set +a` to use them",
                highlight=False,
            )
    except DevstackError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_status(stack)


@devstack.command("down")
@click.option("--secure", is_flag=True, help="stop only the secured Kafka and Redis")
def devstack_down(secure: bool) -> None:
    """Stop Kafka and Redis (and the secured Kafka and Redis)."""
    stack = _devstack(load_settings())
    SecureKafka(stack).down(say=console.print)
    SecureRedis(stack).down(say=console.print)
    if not secure:
        stack.down(say=console.print)
    _print_status(stack)


@devstack.command("status")
def devstack_status() -> None:
    """Report whether Kafka and Redis answer (exit status 1 if either does not)."""
    stack = _devstack(load_settings())
    if not _print_status(stack):
        sys.exit(1)


def _print_status(stack: Devstack) -> bool:
    table = Table("service", "address", "state", "pid", "what")
    statuses = stack.status()
    for s in statuses:
        state = "[green]up[/]" if s.running else "[red]down[/]"
        table.add_row(s.name, s.address, state, str(s.pid or "-"), s.detail)
    secured = SecureKafka(stack)
    if secured.root.exists():  # started once: shown, not needed for the exit status
        state = "[green]up[/]" if secured.answers() else "[red]down[/]"
        what = f"SASL_SSL, SCRAM; settings in {secured.client_env}"
        table.add_row("kafka-secure", secured.address, state, str(secured.own_pid() or "-"), what)
    redis_secured = SecureRedis(stack)
    if redis_secured.home.exists():  # started once: shown, not needed for the exit status
        r = redis_secured.status()
        state = "[green]up[/]" if r.running else "[red]down[/]"
        table.add_row("redis-secure", r.address, state, str(r.pid or "-"), r.detail)
    out.print(table)
    return all(s.running for s in statuses)


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
