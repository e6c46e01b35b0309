"""The framework floor: the raw baseline's work done by a Faust agent.

Consume, decode, update a dict, produce one record per order (like ``bench.raw``), in the
worker's default batches taken from the agent's channel as the worker takes them
(``streams.framework.intake``), acknowledged once their output records are, while the next batch is
processed (like the worker). Between the raw baseline and the full worker, it tells what
Faust's per-message path costs on this machine from what the product's own work (validation,
rules, state, transitions, Redis) costs.

Run as its own process, like the worker::

    python -m bench.floor BOOTSTRAP TOPIC OUT_TOPIC EXPECTED PARTITIONS DATA_DIR RESULT_FILE [MODE]

MODE ``buffered`` (the worker's path) takes the records from a ``streams.framework.intake.Buffer``
(no Faust event per record); ``events`` takes Faust's events from the agent's channel, one
per record, as the worker did before. It writes ``{"records": n, "seconds": s}`` (from the
first batch until the last output record is acknowledged) to RESULT_FILE and exits.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from bench.raw import tally
from config.settings import Settings
from streams import framework
from streams.clients import broker_urls
from streams.framework import intake
from streams.worker import ServiceWorker

# The worker's default batches.
BATCH_MAX_RECORDS: int = Settings.model_fields["batch_max_records"].default
BATCH_MAX_WAIT: float = Settings.model_fields["batch_max_wait_seconds"].default


def run_floor(
    bootstrap: str,
    topic: str,
    out_topic: str,
    expected: int,
    partitions: int,
    data_dir: Path,
    result: Path,
    mode: str = "buffered",
) -> None:
    framework.install()  # Faust as the worker runs it
    app = faust.App(
        data_dir.name,
        broker=broker_urls(bootstrap),
        store="memory://",
        datadir=str(data_dir),
        topic_partitions=partitions,
        web_enabled=False,
        autodiscover=False,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_max_batch_size=512 * 1024,
        stream_buffer_maxsize=4096,
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    state: dict[bytes, list[int]] = {}
    progress = {"seen": 0, "started": 0.0}

    if mode == "buffered":
        buffer = intake.Buffer(app, [topic], max(4096, 2 * BATCH_MAX_RECORDS))

    @app.agent(source, name="bench.floor")
    async def floor(stream: Any) -> None:
        async def settle(sent: list[Any], events: list[Any]) -> None:
            """Acknowledge a batch once its output records are."""
            for delivery in sent:
                await delivery
            if mode == "buffered":
                buffer.ack(events)
            else:
                for event in events:
                    intake.ack(app, event)
            progress["seen"] += len(events)
            if progress["seen"] >= expected:
                seconds = time.perf_counter() - progress["started"]
                result.write_bytes(orjson.dumps({"records": progress["seen"], "seconds": seconds}))
                # The figure is out. Stopping the app from inside its own agent waits for the
                # agent itself; a consumer group's clean leave is not what is measured here.
                os._exit(0)

        settling: asyncio.Task[None] | None = None
        if mode == "buffered":
            batches = buffer.batches(BATCH_MAX_RECORDS, BATCH_MAX_WAIT)
        else:
            batches = intake.batches(app, stream, BATCH_MAX_RECORDS, within=BATCH_MAX_WAIT)
        async for items in batches:
            if not progress["started"]:
                progress["started"] = time.perf_counter()
            sent = []
            for item in items:
                message = item if mode == "buffered" else item.message
                value = tally(state, message.key, message.value)
                sent.append(
                    await app.producer.send(
                        out_topic, message.key, value, message.partition, None, None
                    )
                )
            # As the worker: a batch waits for its acknowledgements while the next one is
            # processed, one batch waiting at a time, in order.
            if settling is not None:
                await settling
            settling = asyncio.create_task(settle(sent, list(items)))

    # As the worker runs: without Faust's terminal spinner, which turns the root logger to
    # DEBUG (aiokafka then builds a log record for every record it sends).
    ServiceWorker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    bootstrap_, topic_, out_, expected_, partitions_, data_dir_, result_ = sys.argv[1:8]
    mode_ = sys.argv[8] if len(sys.argv) > 8 else "buffered"
    run_floor(
        bootstrap_,
        topic_,
        out_,
        int(expected_),
        int(partitions_),
        Path(data_dir_),
        Path(result_),
        mode_,
    )
