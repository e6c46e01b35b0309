"""``segmenter api``: the insights HTTP API and dashboard, a process of its own."""

from __future__ import annotations

import click

from config.rules import RulesError, load_rules
from streams.cli.group import console, load_settings, main


@main.command()
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="override SEGMENTER_API_PORT"
)
def api(port: int | None) -> None:
    """Serve the insights API and the dashboard (reads Redis; needs SEGMENTER_API_TOKEN)."""
    import uvicorn

    from streams.insights.api import create_api

    settings = load_settings()
    if settings.api_token is None:
        raise click.ClickException(
            "set SEGMENTER_API_TOKEN (at least 16 bytes): the API serves customer data"
        )
    try:
        rules = load_rules(settings.rules_file)
    except RulesError as exc:
        raise click.ClickException(str(exc)) from None
    port = settings.api_port if port is None else port
    console.print(f"insights API and dashboard on http://{settings.api_host}:{port}/")
    uvicorn.run(
        create_api(settings, rules),
        host=settings.api_host,
        port=port,
        log_level=settings.log_level,
        access_log=False,
    )
