"""One direct connection to each bootstrap server, to learn why a client could not start.

aiokafka's clients log a failed login or TLS handshake and then raise only
``KafkaConnectionError("Unable to bootstrap ...")``; a single connection made the way they make
theirs raises the real cause (``SaslAuthenticationFailed``, ``ssl.SSLCertVerificationError``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.conn import create_conn

CONNECT_SECONDS = 5.0


async def connection_error(options: dict[str, Any]) -> BaseException | None:
    """The error of connecting (and logging in) to the first bootstrap server that refuses,
    with the clients' ``options``; None if every one accepts or none answers."""
    connect = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    servers = options["bootstrap_servers"]
    for server in (s.strip() for s in servers.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), request_timeout_ms=5000, **connect),
                CONNECT_SECONDS,
            )
        except (TimeoutError, ConnectionError):  # not an answer: no reason to tell
            continue
        except Exception as exc:
            return exc
        conn.close()
    return None
