"""What the command line prints of records is the records' text: never read as markup, and
with control characters shown escaped, so a hostile id or dead letter can neither crash a
command nor act on the operator's terminal."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from models.routing import marketing_transitions
from models.state import CustomerState, compute_metrics
from streams.dlq import SourceRecord, dlq_headers
from streams.redis_cache import RedisCache
from streams.topics import ensure_topics
from tests.conftest import cli_result, settings_from
from tests.factories import at
from tests.unit.core import MODEL, RULES

pytestmark = pytest.mark.integration


async def test_a_customer_whose_id_and_figures_look_like_markup_prints_as_it_is(
    isolated: dict[str, str],
) -> None:
    settings = settings_from(isolated)
    cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:
        state = CustomerState(
            shop_id="default", customer_id="[/oops]", segment="new", revision=1, as_of=at(1)
        )
        await cache.write([(state, compute_metrics(state, at(1), RULES, MODEL.calibration))])
    finally:
        await cache.close()
    result = cli_result(isolated, "customer", "[/oops]")
    assert result.returncode == 0, result.stderr
    assert "customer [/oops] (default)" in result.stdout
    assert "[/oops]" in result.stdout.split("customer_id", 1)[1].splitlines()[0]


async def test_a_dead_letter_with_markup_and_terminal_escapes_prints_them_as_text(
    isolated: dict[str, str],
) -> None:
    settings = settings_from(isolated)
    await ensure_topics(settings, marketing_transitions(RULES))
    source = SourceRecord(b"[/oops]", b"\x1b[2J{", settings.orders_topic, 0, 7)
    message = "not JSON: \x1b[31mred\x1b[0m [bold]x[/bold]"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        headers = dlq_headers("malformed_json", message, source)
        await producer.send_and_wait(
            settings.dlq_topic,
            key=source.key,
            value=source.value,
            headers=list(headers.items()),
        )
    finally:
        await producer.stop()
    result = cli_result(isolated, "dead-letters")
    assert result.returncode == 0, result.stderr
    assert "[/oops]" in result.stdout
    assert "\\x1b[31mred" in result.stdout and "[bold]x" in result.stdout
    assert "\x1b" not in result.stdout
