"""Kafka clients started so that a failed start leaves nothing open."""

from __future__ import annotations

from typing import Any, TypeVar

C = TypeVar("C")


async def started(client: C) -> C:
    """``client`` (an aiokafka consumer, producer or admin client), started; closed again when
    it cannot start (the broker is unreachable), so that no connection or task of it is left
    behind and aiokafka does not warn of a client never closed."""
    started_client: Any = client
    try:
        await started_client.start()
    except BaseException:
        close = getattr(started_client, "stop", None) or started_client.close
        await close()
        raise
    return client
