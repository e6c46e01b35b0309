"""Running a worker: create missing topics, build the app, hand over to Faust's worker."""

from __future__ import annotations

import asyncio
import gc
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError

from config.rules import load_checked_rules
from config.settings import Settings
from models.predictions import PredictionModel
from models.routing import marketing_transitions
from models.rules import SegmentRules
from models.scoring import Calibration
from streams import framework
from streams.app import create_app
from streams.calibrations import read_calibrations
from streams.local_store import lock_data_dir, trust_local_store
from streams.predictions import read_models
from streams.refusals import refusal
from streams.topics import ensure_tombstone_retention, ensure_topics


def run_worker(settings: Settings) -> None:
    """Run one worker until it is stopped (SIGINT/SIGTERM)."""
    framework.check_versions()  # before anything connects: an untested Faust never starts
    with lock_data_dir(settings.data_dir):  # one worker per data directory
        logging.config.dictConfig(logging_config(settings))
        rules, report = load_checked_rules(settings.rules_file)
        note = report.unreached_note()  # quantile mode: a calibration may reach them
        if note:
            logging.getLogger(__name__).warning("rule set %s: %s", rules.version, note)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        partitions, calibrations, models = loop.run_until_complete(_prepare(settings, rules))
        segmenter = create_app(settings, rules, partitions, calibrations)
        # The shops' prediction models in force, before any record is processed: a customer's
        # churn-risk crossing is then scheduled from their first write on.
        for model in models.values():
            loop.run_until_complete(segmenter.processor.set_prediction_model(model, replayed=True))
        tune_collector()
        logging.getLogger(__name__).info(
            "worker for %s: %d partitions, rules %s, %s clock",
            settings.orders_topic,
            partitions,
            rules.version,
            settings.clock,
        )
        clean = trust_local_store(settings, Path(segmenter.app.conf.tabledir))
        worker = ServiceWorker(
            segmenter.app,
            loop=loop,
            loglevel=settings.log_level.upper(),
            logging_config=logging_config(settings),
            quiet=True,  # no banner on stdout: logs only
        )
        try:
            worker.execute_from_commandline()
        except SystemExit as exit_:
            if exit_.code in (0, None):  # stopped: the store and its changelog agree
                clean.parent.mkdir(parents=True, exist_ok=True)
                clean.touch()
            raise


def tune_collector() -> None:
    """The cyclic garbage collector set for a worker's allocation pattern.

    A worker allocates many short-lived objects per record (events, states, transitions); the
    default threshold (700) runs a collection every few records and walks the long-lived ones
    (tables' caches, the due index) again and again. The objects alive now are frozen out of
    collection, and young collections run every 100,000 allocations."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


class ServiceWorker(faust.Worker):
    """Faust's worker without its terminal progress spinner: a worker is a service, its
    output is its log.

    The spinner also turns the root logger to DEBUG when the level asked for is WARNING or
    above, so that every library's debug call in the process (aiokafka logs each message it
    sends) builds a log record only to drop it, a cost a busy worker pays on every record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


def logging_config(settings: Settings) -> dict[str, Any]:
    """``logging.config.dictConfig`` for the worker: JSON lines on stderr by default."""
    formatter: dict[str, Any] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    if settings.log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": settings.log_level.upper(), "handlers": ["default"]},
    }


async def _prepare(
    settings: Settings, rules: SegmentRules
) -> tuple[int, dict[str, Calibration], dict[str, PredictionModel]]:
    """Create missing topics and read the calibrations and prediction models, waiting for the
    broker if it is not up yet (a worker starting before, or during a restart of, the
    broker)."""
    log = logging.getLogger(__name__)
    deadline = time.monotonic() + settings.startup_timeout_seconds
    while True:
        try:
            partitions = await ensure_topics(settings, marketing_transitions(rules))
            await ensure_tombstone_retention(settings)
            return partitions, await read_calibrations(settings), await read_models(settings)
        except (ConnectionError, KafkaError) as exc:
            refused = await refusal(settings, exc)
            if refused is not None:  # waiting cannot help
                raise refused from None
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"Kafka at {settings.kafka_bootstrap_servers} did not answer within "
                    f"{settings.startup_timeout_seconds:.0f}s: {exc}"
                ) from exc
            log.warning("waiting for Kafka at %s: %s", settings.kafka_bootstrap_servers, exc)
            await asyncio.sleep(2)


def spawn_worker(
    overrides: dict[str, str], log_path: Path, tree: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``segmenter worker`` as a child process with ``SEGMENTER_*`` overrides (``tree``:
    the worker of that source tree, as ``python -m bench.compare`` runs other revisions)."""
    env = {**os.environ, **{f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()}}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tree,
        )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """Stop a worker gracefully (SIGTERM), killing it if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
