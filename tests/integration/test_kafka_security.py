"""The product on a Kafka that wants TLS, a SCRAM login and ACLs (the secured devstack): a
worker processes orders over SASL_SSL; refused credentials and missing ACLs stop the worker and
the commands within seconds, with a line naming the setting and never the password."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import pytest

from streams.changelog import read_topic
from streams.cli.replay import publish
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import cli_result, settings_from, wait_for
from tests.factories import placed

pytestmark = pytest.mark.integration

REFUSED_WITHIN_SECONDS = 10.0


async def test_a_worker_over_sasl_ssl_turns_orders_into_transitions(
    secured: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_from(secured)
    await ensure_topics(settings)
    process = spawn_worker(secured, tmp_path / "worker.log")
    try:
        events = [placed("alice", "a-o1", 0, total=12_000), placed("alice", "a-o2", 10)]
        records = [(e["customer_id"].encode(), orjson.dumps(e)) for e in events]
        assert await publish(settings, iter(records)) == 2

        async def transitions() -> list[tuple[str, str | None, str | None]]:
            records = [r async for r in read_topic(settings, settings.transitions_topic)]
            changes = [orjson.loads(r.value) for r in records]
            return [
                (t["customer_id"], t["from_segment"], t["to_segment"])
                for t in changes
                if t["type"] == "segment_changed"
            ]

        found = await wait_for(transitions, lambda ts: len(ts) >= 2, 90, "transitions")
        assert found == [("alice", None, "new"), ("alice", "new", "potential_loyalist")]
    finally:
        status = await asyncio.to_thread(stop_worker, process)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
    assert status == 0, log[-3000:]
    assert secured["kafka_sasl_password"] not in log


@pytest.mark.parametrize("command", [("worker",), ("lag",)])
def test_a_wrong_password_stops_at_once_naming_the_setting_not_the_secret(
    secured: dict[str, str], command: tuple[str, ...]
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = cli_result({**secured, "kafka_sasl_password": wrong}, *command)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert elapsed < REFUSED_WITHIN_SECONDS, output[-3000:]
    assert (
        "Error: Kafka at 127.0.0.1:19192 refused the credentials of "
        "SEGMENTER_KAFKA_SASL_USERNAME=segmenter (SASL SCRAM-SHA-512): "
        "check SEGMENTER_KAFKA_SASL_PASSWORD"
    ) in result.stderr
    assert wrong not in output
    assert secured["kafka_sasl_password"] not in output


def test_a_topic_outside_the_users_acls_is_an_authorization_error(
    secured: dict[str, str],
) -> None:
    topic = f"unlisted-{uuid.uuid4().hex[:10]}.orders"
    started = time.monotonic()
    result = cli_result({**secured, "orders_topic": topic}, "worker")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert elapsed < REFUSED_WITHIN_SECONDS, result.stderr[-3000:]
    assert (
        "Error: Kafka at 127.0.0.1:19192 denied SEGMENTER_KAFKA_SASL_USERNAME=segmenter access "
        f"to a topic resource (topic {topic}): grant its ACLs"
    ) in result.stderr
