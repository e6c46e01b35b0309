"""Creating and inspecting the topics the product uses (aiokafka admin client)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code

from config.settings import Settings
from streams.clients import kafka_options, started

log = logging.getLogger(__name__)

# How long new topics may take until every partition is served.
TOPIC_READY_SECONDS = 30.0
# A topic setting's source in a DescribeConfigs answer (v1 and later): set on the topic.
DYNAMIC_TOPIC_CONFIG = 1


def _config(settings: Settings, name: str, compacted: set[str]) -> dict[str, str] | None:
    """The settings of a topic the product creates: compaction for the state-like ones, the
    dead-letter topic's retention (long enough for an operator to look and send records back);
    the broker's defaults for the rest."""
    if name in compacted:
        return {"cleanup.policy": "compact"}
    if name == settings.dlq_topic:
        return {"retention.ms": str(round(settings.dlq_retention_days * 86_400_000))}
    return None


class TopicsError(RuntimeError):
    """The topics exist but cannot be used as they are (partition counts that differ)."""


async def _admin(settings: Settings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=15_000)
    try:
        await started(admin)
    except KafkaConnectionError as exc:
        raise ConnectionError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} "
            "(is the devstack up? `segmenter devstack up`)"
        ) from exc
    return admin


async def ensure_topics(settings: Settings, marketing: Iterable[str] = ()) -> int:
    """Create missing topics (``marketing``: the transition names that get a topic of their
    own); returns the partition count of the orders topic.

    The internal clock topic must have exactly as many partitions as the orders topic, since a
    clock tick is sent to the partition that holds the customer's state.
    """
    admin = await _admin(settings)
    try:
        existing = await _describe_partitions(admin, [settings.orders_topic])
        partitions = existing.get(settings.orders_topic, settings.partitions)
        wanted = {
            settings.orders_topic: partitions,
            settings.clock_topic: partitions,
            # consent and erasure are co-partitioned with orders: keyed by customer as well
            settings.consent_topic: partitions,
            settings.erasure_topic: partitions,
            settings.erasure_receipts_topic: settings.partitions,
            settings.transitions_topic: settings.partitions,
            settings.dlq_topic: settings.partitions,
            settings.calibrations_topic: 1,
            settings.predictions_topic: 1,
            **{settings.marketing_topic(name): settings.partitions for name in marketing},
        }
        compacted = {settings.calibrations_topic, settings.predictions_topic}
        current = await _describe_partitions(admin, list(wanted))
        missing = [
            NewTopic(
                name,
                count,
                settings.replication_factor,
                topic_configs=_config(settings, name, compacted),
            )
            for name, count in wanted.items()
            if name not in current
        ]
        if missing:
            response = await admin.create_topics(missing)
            _raise_for_topic_errors(response.topic_errors)
            log.info("created topics %s", ", ".join(t.name for t in missing))
        for name in (
            settings.clock_topic,
            settings.consent_topic,
            settings.erasure_topic,
        ):
            count = current.get(name, partitions)
            if count != partitions:
                raise TopicsError(
                    f"topic {name} has {count} partitions but {settings.orders_topic} has "
                    f"{partitions}: they must match (records are keyed by customer)"
                )
        await _wait_for_topics(admin, list(wanted))
        if missing:
            await _wait_until_served(settings, {t.name: t.num_partitions for t in missing})
        return partitions
    finally:
        await admin.close()


def _raise_for_topic_errors(topic_errors: list[tuple[Any, ...]]) -> None:
    """The first error of a topic that was not created (one another worker was faster to create
    is not an error)."""
    for topic, code, *_ in topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            raise for_code(code)(f"topic {topic}")


async def delete_topics(settings: Settings, topics: list[str]) -> None:
    admin = await _admin(settings)
    try:
        present = [t for t in topics if t in set(await admin.list_topics())]
        if present:
            await admin.delete_topics(present)
        for _ in range(100):
            if not set(present) & set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"topics {present} still exist after deletion")
    finally:
        await admin.close()


async def _describe_partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    listed = set(await admin.list_topics())
    present = [t for t in topics if t in listed]
    if not present:
        return {}
    described = await admin.describe_topics(present)
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}


async def _wait_for_topics(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    for _ in range(100):
        if set(topics) <= set(await admin.list_topics()):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topics {topics} did not appear")


async def _wait_until_served(settings: Settings, topics: dict[str, int]) -> None:
    """Until every partition of new topics answers for its offsets. A topic is listed before
    its partitions' leaders serve them: a consumer started in between logs an error for each
    (aiokafka's ``Failed fetch offsets ... NotLeaderForPartitionError``) until they do. Asking
    for the end offsets here retries quietly."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await started(consumer)
    try:
        partitions = [TopicPartition(t, p) for t, count in topics.items() for p in range(count)]
        await asyncio.wait_for(consumer.end_offsets(partitions), TOPIC_READY_SECONDS)
    finally:
        await consumer.stop()


async def broker_answers(settings: Settings) -> bool:
    """Whether the brokers answer a metadata request within a few seconds."""
    try:
        admin = await _admin(settings)
    except ConnectionError:
        return False
    try:
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    except Exception:
        return False
    finally:
        await admin.close()


def changelog_topics(settings: Settings) -> list[str]:
    """The tables' changelog topics (Faust creates them: ``<app id>-<table>-changelog``)."""
    return [settings.changelog_topic, f"{settings.app_id}-erasures-changelog"]


async def ensure_tombstone_retention(settings: Settings) -> list[str]:
    """Set ``delete.retention.ms`` on existing changelog topics that have another value (topics
    created before the setting existed, or with another one); returns the topics changed.

    Faust creates missing changelog topics with it (``streams.app``). AlterConfigs replaces a
    topic's own settings as a whole, so the topic's other settings are sent along unchanged.
    A broker that refuses (no AlterConfigs permission) is logged, not fatal: the tombstones
    then stay as long as the topic's current value says (docs/privacy.md)."""
    wanted = str(settings.changelog_delete_retention_ms)
    admin = await _admin(settings)
    changed = []
    try:
        listed = set(await admin.list_topics())
        present = [t for t in changelog_topics(settings) if t in listed]
        if not present:
            return []
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
        )
        for response in responses:
            for error, message, _type, name, entries, *_ in response.resources:
                if error:
                    raise for_code(error)(f"topic {name}: {message}")
                own = _own_settings(response.API_VERSION, entries)
                if own is None or own.get("delete.retention.ms") == wanted:
                    continue
                result = await admin.alter_configs(
                    [
                        ConfigResource(
                            ConfigResourceType.TOPIC, name, {**own, "delete.retention.ms": wanted}
                        )
                    ]
                )
                for code, text, _kind, topic in result[0].resources:
                    if code:
                        raise for_code(code)(f"topic {topic}: {text}")
                changed.append(name)
    except Exception as exc:
        log.warning(
            "could not set delete.retention.ms=%s on the changelog topics %s: %r (the tombstones "
            "of erased customers stay as long as the topics' current value says)",
            wanted,
            changelog_topics(settings),
            exc,
        )
    finally:
        await admin.close()
    if changed:
        log.info("set delete.retention.ms=%s on %s", wanted, ", ".join(changed))
    return changed


def _own_settings(version: int, entries: list[tuple[Any, ...]]) -> dict[str, str] | None:
    """The settings set on the topic itself; None if one of them is hidden (sensitive), so
    that they could not be sent back unchanged."""
    own = {}
    for name, value, _read_only, source, *_ in entries:
        set_here = source == DYNAMIC_TOPIC_CONFIG if version >= 1 else not source
        if not set_here:
            continue
        if value is None:
            return None
        own[name] = value
    return own
