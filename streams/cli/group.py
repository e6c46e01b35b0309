"""The ``segmenter`` command group, its one-line errors, and what every command shares: the
settings, the consoles and the progress bar."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import click
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from config.rules import RulesError
from config.settings import Settings
from models.events import CONTROL_CHARACTERS
from streams.framework import UnsupportedFramework
from streams.local_store import DataDirInUse
from streams.refusals import refusal
from streams.topics import TopicsError

console = Console(stderr=True)
out = Console()


def literal(value: object) -> Text:
    """Record contents printed as they are: never read as rich markup (a customer id such as
    ``[/oops]`` is text), control characters shown escaped (a terminal escape in a dead letter
    must not reach the operator's terminal)."""
    escaped = CONTROL_CHARACTERS.sub(
        lambda m: m.group().encode("unicode_escape").decode(), str(value)
    )
    return Text(escaped)


def load_settings() -> Settings:
    """The settings from the environment (read when a command runs, not at import)."""
    return Settings()


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
            raise click.ClickException(f"invalid SEGMENTER_* settings: {_problems(exc)}") from exc
        except (RulesError, TopicsError, UnsupportedFramework, DataDirInUse) as exc:
            raise click.ClickException(str(exc)) from exc
        except KafkaError as exc:
            refused = asyncio.run(refusal(Settings(), exc))
            if refused is not None:
                raise click.ClickException(str(refused)) from None
            raise click.ClickException(_kafka_error(exc)) from exc
        except RedisError as exc:
            raise click.ClickException(_redis_error(exc)) from exc
        except RedisClusterException as exc:  # no node of the cluster answered
            raise click.ClickException(_redis_error(exc, unreachable=True)) from exc


def _problems(exc: ValidationError) -> str:
    """The settings' validation errors on one line, each naming its variable."""
    return "; ".join(
        f"SEGMENTER_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        if error["loc"]
        else error["msg"]
        for error in exc.errors()
    )


def _kafka_error(exc: KafkaError) -> str:
    unreachable = isinstance(exc, KafkaConnectionError | KafkaTimeoutError)
    settings = Settings()
    message = _server_error(
        "Kafka",
        settings.kafka_bootstrap_servers,
        exc,
        "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS",
        unreachable,
    )
    if unreachable:  # a listener of another protocol closes the connection without a word
        message += (
            " A listener of another protocol also closes the connection: "
            f"SEGMENTER_KAFKA_SECURITY_PROTOCOL is {settings.kafka_security_protocol}."
        )
    return message


def _redis_error(exc: Exception, unreachable: bool = False) -> str:
    unreachable = unreachable or isinstance(exc, RedisConnectionError | RedisTimeoutError)
    url = urlsplit(Settings().redis_url.get_secret_value())
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
