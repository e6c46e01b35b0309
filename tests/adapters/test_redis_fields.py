"""The Redis hash of a customer: every instant written out, shared or not."""

from __future__ import annotations

from datetime import timedelta

from models.frozen import evolve
from models.segment_model import current_metrics
from streams.redis_cache import RedisCache
from tests.factories import at, placed
from tests.unit.core import MODEL, fold


def _instants(fields: list[str]) -> dict[str, str]:
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    names = ("segment_since", "as_of", "first_order_at", "last_order_at")
    return {name: pairs[name] for name in names}


def test_a_new_customers_one_instant_is_each_of_their_instants() -> None:
    state, _ = fold([placed("c1", "o1", 3)])
    m = current_metrics(state, MODEL)
    assert state.as_of is state.segment_since is m.first_order_at is m.last_order_at  # one object
    day = at(3).isoformat()
    assert _instants(RedisCache._fields(state, m)) == {
        "segment_since": day,
        "as_of": day,
        "first_order_at": day,
        "last_order_at": day,
    }


def test_different_instants_are_each_written_out() -> None:
    state, _ = fold([placed("c1", "o1", 0), placed("c1", "o2", 10), placed("c1", "o3", 25)])
    m = current_metrics(state, MODEL)
    later = evolve(state, as_of=at(40), segment_since=at(33))  # a time step moved them
    for customer, since in ((state, state.segment_since), (later, at(33))):
        assert since is not None and customer.as_of is not None
        assert _instants(RedisCache._fields(customer, m)) == {
            "segment_since": since.isoformat(),
            "as_of": customer.as_of.isoformat(),
            "first_order_at": at(0).isoformat(),
            "last_order_at": at(25).isoformat(),
        }
    # the segment's start the very last order, the latest instant later
    moved = evolve(state, segment_since=m.last_order_at, as_of=at(40))
    assert _instants(RedisCache._fields(moved, m)) == {
        "segment_since": at(25).isoformat(),
        "as_of": at(40).isoformat(),
        "first_order_at": at(0).isoformat(),
        "last_order_at": at(25).isoformat(),
    }
    # equal instants that are not one object, and none at all
    copy = evolve(state, segment_since=at(25) + timedelta(0), as_of=None)
    assert _instants(RedisCache._fields(copy, m)) == {
        "segment_since": at(25).isoformat(),
        "as_of": "",
        "first_order_at": at(0).isoformat(),
        "last_order_at": at(25).isoformat(),
    }
