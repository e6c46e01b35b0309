"""A full disk under a running worker, on a real small filesystem (a 32 MiB tmpfs mounted as its
data directory): the worker neither exits nor rebuilds its store; ``/readyz`` answers 503 with
``"disk": false`` while it waits; once there is room it goes on, and every order is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from models.routing import marketing_transitions
from streams.changelog import read_table
from streams.cli.replay import publish
from streams.lag import group_lag
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, settings_from, wait_for
from tests.factories import placed
from tests.unit.core import RULES

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (mounting needs root, as CI runs)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the filesystem to its last byte; returns the filler file."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while f.write(chunk[:size]):
                    pass
    return filler


def _orders(first: int, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"d{i}".encode(), orjson.dumps(placed(f"d{i}", f"d-o{i}", i / 10)))
        for i in range(first, first + count)
    ]


async def _readyz(port: int) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, orjson.loads(await response.read())


async def test_a_full_disk_makes_the_worker_wait_not_exit(
    isolated: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    port = free_port()
    overrides = {**isolated, "data_dir": str(small_disk / "data"), "web_port": str(port)}
    settings = settings_from(overrides)
    await ensure_topics(settings, marketing_transitions(RULES))
    log = tmp_path / "worker.log"
    process = spawn_worker(overrides, log)
    filler: Path | None = None
    try:

        async def committed() -> list[Any]:
            return await group_lag(settings)

        def all_committed(count: int) -> Any:
            return lambda lag: bool(lag) and sum(p.committed or 0 for p in lag) == count

        assert await publish(settings, iter(_orders(0, 20))) == 20
        await wait_for(committed, all_committed(20), 90, "the first orders")
        await wait_for(lambda: _readyz(port), lambda r: r[0] == 200, 60, "ready")

        filler = _fill(small_disk)
        assert await publish(settings, iter(_orders(20, 200))) == 200
        _, body = await wait_for(
            lambda: _readyz(port), lambda r: r[0] == 503, 60, "/readyz to report the full disk"
        )
        assert body["checks"]["disk"] is False
        assert process.poll() is None  # waiting, not exited
        assert sum(p.committed or 0 for p in await group_lag(settings)) < 220

        os.remove(filler)
        filler = None
        await wait_for(committed, all_committed(220), 120, "every order once there is room")
        await wait_for(lambda: _readyz(port), lambda r: r[0] == 200, 60, "ready again")
        table = await read_table(settings)
        assert {k for k in table if k.startswith("default/d")} == {
            f"default/d{i}" for i in range(220)
        }
        assert "disk is full" in log.read_text()
        assert process.poll() is None
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        status_code = await asyncio.to_thread(stop_worker, process)
    assert status_code == 0, log.read_text()[-3000:]
