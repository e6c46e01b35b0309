"""``python -m bench.compare``: the fold alone (``bench.core``) of git revisions, interleaved.

Each revision is exported (``git archive``) into a directory of its own and folds the same
generated records in a process of its own; the revisions take turns, round after round, so a
machine that gets busier or quieter during the comparison weighs on all of them alike. Prints
each revision's orders/s per round, their median and its ratio to the first revision's.
``.`` is the working tree as it is.
"""

from __future__ import annotations

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
def cli(revisions: tuple[str, ...], customers: int, orders: int, rounds: int) -> None:
    """Compare the fold alone of REVISIONS (default: HEAD~1 and the working tree)."""
    revisions = revisions or ("HEAD~1", ".")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in revisions}
        rates: dict[str, list[float]] = {rev: [] for rev in revisions}
        for round_ in range(rounds):
            # alternate who goes first
            order = revisions if round_ % 2 == 0 else tuple(reversed(revisions))
            for rev in order:
                rate = fold_rate(trees[rev], customers, orders)
                rates[rev].append(rate)
                click.echo(f"round {round_ + 1}: {rev}: {rate:,.0f} orders/s", err=True)
    first = statistics.median(rates[revisions[0]])
    for rev in revisions:
        median = statistics.median(rates[rev])
        runs = ", ".join(f"{r:,.0f}" for r in rates[rev])
        click.echo(f"{rev}: median {median:,.0f} orders/s ({runs}); {median / first:.3f}x")


if __name__ == "__main__":
    cli()
