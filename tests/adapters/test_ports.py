"""Ports picked for trial servers: free when picked, and out of the kernel's reach for outgoing
connections, whose sockets once took a picked port before the server bound it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from streams.cli.processes import PICKED_PORTS_FROM, DevstackError, unused_port
from streams.cli.redis_cluster import BUS_OFFSET, cluster_ports


def outgoing_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_a_picked_port_is_outside_the_outgoing_range_and_bindable() -> None:
    low, high = outgoing_range()
    for _ in range(200):
        port = unused_port()
        assert not low <= port <= high
        assert port >= PICKED_PORTS_FROM
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if anything holds it


def test_a_held_port_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held_port = held.getsockname()[1]
    candidates = iter([held_port, held_port, 21_001])
    monkeypatch.setattr("streams.cli.processes.random.choice", lambda _: next(candidates))
    try:
        assert unused_port() == 21_001
    finally:
        held.close()


def test_cluster_ports_leave_room_for_their_bus_ports_and_never_share_one() -> None:
    low, _ = outgoing_range()
    ports = cluster_ports(6)
    every = [each for port in ports for each in (port, port + BUS_OFFSET)]
    assert len(set(every)) == 12
    assert all(PICKED_PORTS_FROM <= each < low for each in every)


def test_no_candidates_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.cli.processes._ephemeral_range", lambda: (20_000, 65_535))
    with pytest.raises(DevstackError, match="no port outside the outgoing range 20000-65535"):
        unused_port()
