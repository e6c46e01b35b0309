"""``segmenter predict``: fitting the shops' prediction models and showing the published ones."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import click

from models.predictions import PredictionModel
from streams.cli.group import console, literal, load_settings, main, out


@main.group()
def predict() -> None:
    """Prediction models: P(alive), expected orders and lifetime value per customer."""


@predict.command("fit")
@click.option("--shop", default=None, help="only this shop (default: every shop)")
def predict_fit(shop: str | None) -> None:
    """Fit BG/NBD and Gamma-Gamma per shop over every customer and publish them. Exits 3
    when no model could be fitted (the reasons are printed)."""
    from streams.predictions import fit_and_publish
    from streams.topics import ensure_topics

    if shop is not None and not shop.strip():
        raise click.BadParameter("must not be empty", param_hint="--shop")
    settings = load_settings()

    async def run():  # type: ignore[no-untyped-def]
        await ensure_topics(settings)
        return await fit_and_publish(settings, datetime.now(UTC), shop)

    report = asyncio.run(run())
    for reason in report.refused.values():
        console.print(literal(f"no model: {reason}"), soft_wrap=True)
    if not report.published:
        which = f"shop {shop!r}" if shop else "any shop"
        console.print(literal(f"nothing published: no model could be fitted for {which}"))
        raise SystemExit(3)
    _print(report.published)


@predict.command("show")
def predict_show() -> None:
    """Print the prediction model of every shop, as workers adopt them."""
    from streams.predictions import read_models

    models = asyncio.run(read_models(load_settings()))
    if not models:
        console.print("no prediction model published (`segmenter predict fit` fits them)")
        return
    _print(list(models.values()))


def _print(models: list[PredictionModel]) -> None:
    """One line per shop (printed whole, however narrow the terminal)."""
    for m in sorted(models, key=lambda m: m.shop_id):
        bg, gg = m.bgnbd, m.gamma_gamma
        spend = f"p={gg.p:.4g} q={gg.q:.4g} v={gg.v:.4g}" if gg else "none (no CLV)"
        line = (
            f"{m.shop_id} {m.version}: {m.customers} customers, {m.repeat_buyers} repeat buyers; "
            f"BG/NBD r={bg.r:.4g} alpha={bg.alpha:.4g} a={bg.a:.4g} b={bg.b:.4g}; "
            f"spend {spend}; fitted in {m.fit_seconds:.2f} s"
        )
        out.print(literal(line), soft_wrap=True)
