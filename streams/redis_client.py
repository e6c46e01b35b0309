"""Redis clients built from the settings (a single Redis or a Redis Cluster, with a user, a
password and TLS from the URL), and the ACL rules a Redis user of the product needs."""

from __future__ import annotations

from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

# What the product sends (the cache, the command line, the cluster client's discovery): an ACL
# user needs these commands on the keys under its prefix, nothing else. docs/operations.md
# quotes ``acl_rules``; the secured devstack's user has exactly these.
ACL_COMMANDS: Final = (
    "ping",
    "hget",
    "hmget",
    "hgetall",
    "hset",
    "del",
    "sadd",
    "srem",
    "scard",
    "smembers",
    "sscan",  # the insights API's member pages
    "exists",
    "set",
    "evalsha",
    "script|load",
    "cluster|slots",
    "command",
)


def acl_rules(prefix: str) -> str:
    """The ACL rules of a user that can run the product with key ``prefix`` and nothing else."""
    commands = " ".join(f"+{command}" for command in ACL_COMMANDS)
    return f"resetkeys ~{prefix}* resetchannels -@all {commands}"


def connect(url: str, cluster: bool = False) -> Any:
    """A client of the Redis at ``url`` (``redis://`` or ``rediss://``, with a user, password and
    TLS options such as ``ssl_ca_certs`` in the query), of a Redis Cluster if ``cluster``."""
    options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.from_url(url, **options)
