"""The Redis cache against the real devstack Redis: revision guard and membership moves."""

from __future__ import annotations

import pytest

from models.state import CustomerState, compute_metrics
from streams.redis_cache import RedisCache
from tests.conftest import settings_from
from tests.factories import at

pytestmark = pytest.mark.integration
from tests.unit.core import MODEL, RULES  # noqa: E402

CAL = MODEL.calibration


def _state(revision: int, segment: str | None) -> CustomerState:
    return CustomerState(
        shop_id="s1", customer_id="c1", segment=segment, revision=revision, as_of=at(revision)
    )


async def test_older_state_never_overwrites_newer_and_membership_follows(
    isolated: dict[str, str],
) -> None:
    settings = settings_from(isolated)
    cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
    try:

        async def write(state: CustomerState) -> None:
            await cache.write([(state, compute_metrics(state, at(0), RULES, CAL))])

        await write(_state(2, "new"))
        await write(_state(1, "returning"))  # late, older: ignored
        assert (await cache.read_customer("s1", "c1"))["segment"] == "new"
        assert (await cache.read_customer("s1", "c1"))["revision"] == "2"
        assert await cache.segment_sizes("s1", ["new", "returning"]) == {"new": 1, "returning": 0}

        await write(_state(3, "returning"))
        assert await cache.members("s1", "returning") == {"c1"}
        assert await cache.members("s1", "new") == set()

        await write(_state(4, None))  # no orders left: in no segment
        assert (await cache.read_customer("s1", "c1"))["segment"] == ""
        assert await cache.segment_sizes("s1", ["new", "returning"]) == {"new": 0, "returning": 0}
        assert cache.pending == 0
    finally:
        await cache.close()


async def test_an_unreachable_redis_keeps_writes_pending_instead_of_raising() -> None:
    cache = RedisCache.from_url("redis://127.0.0.1:1/0", "unreachable:")
    try:
        state = _state(1, "new")
        await cache.write([(state, compute_metrics(state, at(0), RULES, CAL))])
        assert cache.pending == 1
        assert cache.errors == 1
        assert await cache.flush_pending() == 1  # still down: kept
    finally:
        await cache.close()


async def test_a_batch_of_several_chunks_writes_every_customer_and_guards_each_one(
    isolated: dict[str, str],
) -> None:
    from streams.redis_layout import WRITE_CHUNK

    settings = settings_from(isolated)
    cache = RedisCache.from_url(settings.redis_url.get_secret_value(), settings.redis_prefix)
    count = 2 * WRITE_CHUNK + 7

    def state(i: int, revision: int, segment: str) -> CustomerState:
        return CustomerState(
            shop_id="s2", customer_id=f"c{i}", segment=segment, revision=revision, as_of=at(i)
        )

    def metrics(s: CustomerState):  # type: ignore[no-untyped-def]
        return compute_metrics(s, at(0), RULES, CAL)

    try:
        await cache.write((s, metrics(s)) for s in (state(i, 5, "new") for i in range(count)))
        assert await cache.segment_sizes("s2", ["new"]) == {"new": count}
        # one batch: even customers move on (newer), odd ones come late (older): ignored
        later = [state(i, 6 if i % 2 == 0 else 4, "returning") for i in range(count)]
        await cache.write((s, metrics(s)) for s in later)
        movers = -(-count // 2)
        assert await cache.segment_sizes("s2", ["new", "returning"]) == {
            "new": count - movers,
            "returning": movers,
        }
        for i in (0, 1, WRITE_CHUNK, count - 1):
            stored = await cache.read_customer("s2", f"c{i}")
            assert stored["revision"] == ("6" if i % 2 == 0 else "5")
            assert stored["segment"] == ("returning" if i % 2 == 0 else "new")
            assert stored["customer_id"] == f"c{i}" and stored["as_of"] == at(i).isoformat()
        assert cache.pending == 0 and cache.errors == 0
    finally:
        await cache.close()
