"""``python -m streams.cli``: the ``segmenter`` command line (how the worker spawns workers)."""

from streams.cli import main

main()
