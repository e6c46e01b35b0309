"""The worker's log level is the level asked for: no library builds debug records."""

from __future__ import annotations

import asyncio
import logging

import faust
import pytest

from streams.worker import ServiceWorker


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR, logging.INFO])
def test_the_root_logger_keeps_the_level_asked_for(level: int) -> None:
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    loop = asyncio.new_event_loop()
    try:
        app = faust.App("log-level-test", broker="kafka://127.0.0.1:1", autodiscover=False)
        worker = ServiceWorker(app, loop=loop, loglevel=level, quiet=True)
        worker._setup_logging()
        assert root.level == level
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    finally:
        loop.close()
        root.setLevel(saved_level)
        root.handlers[:] = saved_handlers
