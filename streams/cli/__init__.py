"""The ``segmenter`` command line and the operator tools it runs (devstack, demo, replay, sample
data, privacy requests): an entry point only; the work happens in the modules it calls.

``main`` is the command group; importing the command modules adds their commands to it."""

from streams.cli import (  # noqa: F401 (adds the commands)
    administration,
    insights,
    inspection,
    predictions,
    running,
)
from streams.cli.group import main

__all__ = ["main"]
