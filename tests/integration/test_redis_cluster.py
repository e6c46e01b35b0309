"""The cache on a real 3-master Redis Cluster on loopback: every write script call stays in one
slot, sizes and members add up over the buckets, a manual failover while the cache writes
loses nothing and lets nothing older overwrite newer, and a worker and the command line work
on it as an ACL user with the documented rules."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from config.settings import DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT
from models.state import CustomerState, compute_metrics
from streams.cli.devstack import Devstack
from streams.cli.redis_cluster import LocalRedisCluster, cluster_ports
from streams.cli.replay import publish
from streams.redis_cache import RedisCache
from streams.redis_client import acl_rules
from streams.topics import ensure_topics
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, run_cli, settings_from, wait_for
from tests.factories import at, placed

pytestmark = pytest.mark.integration
from tests.unit.core import MODEL, RULES  # noqa: E402

SEGMENTS = ("new", "returning")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    root = tmp_path_factory.mktemp("redis-cluster")
    binary = Devstack(Path(root), DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT).redis_binary()
    nodes = LocalRedisCluster(root, binary, cluster_ports(3))
    try:
        nodes.up()
        yield nodes
    finally:
        nodes.down(say=print)


@pytest.fixture
async def cache(cluster: LocalRedisCluster) -> Any:
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    cache = RedisCache.from_url(cluster.url, prefix, cluster=True, segments=SEGMENTS)
    yield cache
    await cache.close()


def _item(shop: str, customer: str, revision: int, segment: str | None) -> Any:
    state = CustomerState(
        shop_id=shop, customer_id=customer, segment=segment, revision=revision, as_of=at(revision)
    )
    return state, compute_metrics(state, at(0), RULES, MODEL.calibration)


async def test_writes_spread_over_the_masters_and_sizes_add_up_over_the_buckets(
    cluster: LocalRedisCluster, cache: RedisCache
) -> None:
    customers = [f"c{i}" for i in range(1200)]
    await cache.write(_item(shop, c, 2, "new") for shop in ("s1", "s2") for c in customers)
    # the even ones move on, the odd ones get a late, older state: refused
    await cache.write(
        _item("s1", c, 3 if i % 2 == 0 else 1, "returning") for i, c in enumerate(customers)
    )
    assert cache.pending == 0 and cache.errors == 0
    assert await cache.segment_sizes("s1", SEGMENTS) == {"new": 600, "returning": 600}
    assert await cache.segment_sizes("s2", SEGMENTS) == {"new": 1200, "returning": 0}
    assert await cache.members("s1", "returning") == set(customers[::2])
    assert (await cache.read_customer("s1", "c1"))["revision"] == "2"
    assert (await cache.read_customer("s1", "c0"))["segment"] == "returning"
    # every master holds some of them: the writes were not all on one node
    sizes = [cluster.node(port).dbsize() for port in cluster.masters]
    assert all(size > 0 for size in sizes) and sum(sizes) == 2 * 1200 + 2 * 16 + 16, sizes

    assert await cache.remove("s1", "c0")
    assert await cache.members("s1", "returning") == set(customers[2::2])
    assert await cache.missing_markers("app", range(4)) == [0, 1, 2, 3]
    for partition in (1, 3):
        await cache.set_marker("app", partition)
    assert await cache.missing_markers("app", range(4)) == [0, 2]
    assert await cache.ping()


async def test_a_failover_while_writing_loses_nothing_and_keeps_the_newest(
    cluster: LocalRedisCluster, cache: RedisCache, tmp_path: Path
) -> None:
    (replica,) = cluster_ports(1)
    cluster.add_replica(replica, cluster.masters[0])
    customers = [f"c{i}" for i in range(400)]
    rounds = 60
    done = asyncio.Event()

    async def writer() -> None:
        for revision in range(1, rounds + 1):
            segment = SEGMENTS[revision % 2]
            await cache.write(_item("s1", c, revision, segment) for c in customers)
            # and a late, older state of some of them, which must never win
            await cache.write(_item("s1", c, revision - 3, "stale") for c in customers[::7])
            await cache.flush_pending()
            await asyncio.sleep(0.02)
        done.set()

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.3)  # writes under way
    await asyncio.to_thread(cluster.failover, replica)
    assert not done.is_set(), "the writes ended before the failover: nothing was tested"
    await task
    await wait_for(cache.flush_pending, lambda left: left == 0, 60, "pending writes to drain")

    last = SEGMENTS[rounds % 2]
    for c in customers[::37]:
        stored = await cache.read_customer("s1", c)
        assert (stored["revision"], stored["segment"]) == (str(rounds), last)
    assert await cache.members("s1", last) == set(customers)
    assert await cache.segment_sizes("s1", [*SEGMENTS, "stale"]) == {
        last: len(customers),
        SEGMENTS[(rounds + 1) % 2]: 0,
        "stale": 0,
    }
    assert replica in cluster.masters  # the replica did take over
    print(f"write errors during the failover (retried): {cache.errors}")


async def test_a_worker_writes_to_the_cluster_as_an_acl_user_and_the_cli_reads_it(
    cluster: LocalRedisCluster, isolated: dict[str, str], tmp_path: Path
) -> None:
    prefix = isolated["redis_prefix"]
    for port in cluster.pids:  # ACLs are per node: the documented rules on every one
        cluster.node(port).execute_command(
            "ACL", "SETUSER", "segmenter", "reset", "on", ">pw-cluster", *acl_rules(prefix).split()
        )
    web = str(free_port())
    overrides = {
        **isolated,
        "redis_url": f"redis://segmenter:pw-cluster@127.0.0.1:{cluster.masters[0]}/0",
        "redis_cluster": "true",
        "web_port": web,
    }
    settings = settings_from(overrides)
    await ensure_topics(settings)
    customers = [f"k{i}" for i in range(40)]
    records = [
        (c.encode(), orjson.dumps(placed(c, f"{c}-o1", i / 10))) for i, c in enumerate(customers)
    ]
    log = tmp_path / "worker.log"
    worker = spawn_worker(overrides, log)
    try:
        assert await publish(settings, iter(records)) == len(records)
        reader = RedisCache.from_url(cluster.url, prefix, cluster=True)
        try:
            await wait_for(
                lambda: reader.segment_sizes("default", ["new"]),
                lambda sizes: sizes == {"new": len(customers)},
                90,
                "the worker's writes on the cluster",
            )
            assert await reader.members("default", "new") == set(customers)
        finally:
            await reader.close()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{web}/readyz") as response,
        ):
            assert (response.status, (await response.json())["checks"]["redis"]) == (200, True)
        table = await run_cli(overrides, "segments")
        assert re.search(rf"\bnew\b\D+{len(customers)}\b", table), table
        shown = await run_cli(overrides, "customer", "k7")
        assert "new" in shown
    finally:
        status = stop_worker(worker)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Redis refuses" not in text, text[-3000:]
    assert status == 0, text[-3000:]


async def test_an_unreachable_cluster_keeps_writes_pending_instead_of_raising() -> None:
    (port,) = cluster_ports(1)  # nothing listens there
    cache = RedisCache.from_url(f"redis://127.0.0.1:{port}/0", "unreachable:", cluster=True)
    try:
        await cache.write([_item("s1", "c1", 1, "new")])
        assert (cache.pending, cache.errors) == (1, 1)
        assert not await cache.remove("s1", "c2")
        assert not await cache.ping()
        assert await cache.flush_pending() == 2  # still down: the write and the removal kept
        assert cache.pending == 2  # the write and the removal
    finally:
        await cache.close()
