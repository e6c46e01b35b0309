"""The one place that reaches into Faust's, mode's and aiokafka's private parts.

Everything else in ``streams`` talks to Faust and aiokafka through their public API and this
package. What is here, and why it cannot use the public API:

- ``patches``: corrections to Faust's consumer (skipped records, commits that fall behind, a
  stream that stops after a broker restart, per-record scheduling cost).
- ``intake``: the agent's records a batch at a time, read from its channel queue, with Faust's
  acknowledgement bookkeeping.
- ``outbox``: records sent as producer batches (one per topic partition) through the app's
  aiokafka producer.
- ``tables``: reads and write batches of one partition of a table's RocksDB store, and the
  changelog records held, sent together and acknowledged per batch.
- ``consumer``: how far the worker's consumer has fetched and committed a partition, and a
  metadata refresh for the command line's clients.
- ``store_age``: a partition's RocksDB store discarded before it is opened when it is older
  than the changelog keeps tombstones.
- ``connection``: one direct connection to a broker, to learn why a client could not start
  (aiokafka logs a refused login and reports only that it could not bootstrap).

These depend on the internals of the versions listed in ``TESTED``: ``install`` refuses to run
on any other version, with a message naming what was found and what is supported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import metadata

# Distribution -> the release series the internals were written and tested against.
TESTED: Mapping[str, str] = {
    "faust-streaming": "0.15",
    "mode-streaming": "0.7",
    "aiokafka": "0.14",
}


class UnsupportedFramework(RuntimeError):
    """An installed Faust, mode or aiokafka whose internals this package was not tested on."""


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions(installed: Callable[[str], str | None] | None = None) -> None:
    """Raise ``UnsupportedFramework`` unless every distribution in ``TESTED`` is installed in
    its tested release series (``installed(name)`` gives a distribution's version; by default
    the installed one's)."""
    installed = installed or _installed
    wrong = []
    for name, series in TESTED.items():
        version = installed(name)
        if version is None or not _in_series(version, series):
            wrong.append(f"{name} {version or 'missing'} (tested: {series}.x)")
    if wrong:
        wanted = " ".join(f"'{name}=={series}.*'" for name, series in TESTED.items())
        raise UnsupportedFramework(
            "segmenter reaches into Faust's and aiokafka's internals and was not tested with "
            f"{', '.join(wrong)}: install a tested version (pip install {wanted})"
        )


def _in_series(version: str, series: str) -> bool:
    parts, wanted = version.split("."), series.split(".")
    return parts[: len(wanted)] == wanted


def install() -> None:
    """Check the versions, then apply the corrections to Faust (once per process)."""
    check_versions()
    from streams.framework import patches  # Faust's internals: imported once checked

    patches.apply()
