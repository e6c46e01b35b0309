"""streams.failures: a failed batch is processed again; a record that keeps failing is
dead-lettered after a bounded number of attempts and the rest of its batch goes on; a
dependency that fails is waited for, however long, and never dead-letters a record; a full
disk holds the commit instead of failing it. Nothing is skipped, nothing is acknowledged
twice."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.dlq import SourceRecord
from streams.failures import MAX_ATTEMPTS, backoff, dependency_failure, disk_full
from tests.adapters.fakes import Worker


def _order(offset: int, customer: str = "c1") -> SourceRecord:
    event = {
        "type": "order_placed",
        "event_id": f"e{offset}",
        "shop_id": "shop",
        "customer_id": customer,
        "order_id": f"o{offset}",
        "occurred_at": f"2026-01-{offset + 1:02d}T10:00:00Z",
        "currency": "EUR",
        "total": 1000 + offset,
        "lines": [{"sku": "s", "category": "c", "quantity": 1, "unit_price": 1000 + offset}],
    }
    return SourceRecord(customer.encode(), orjson.dumps(event), "orders", 0, offset)


class Flaky:
    """A handler that raises ``error`` for the record at ``offset`` the first ``times`` calls,
    then hands over to the real one."""

    def __init__(self, real: Any, offset: int, times: int, error: Exception) -> None:
        self.real, self.offset, self.times, self.error = real, offset, times, error
        self.calls: list[int] = []

    async def __call__(self, record: SourceRecord) -> None:
        self.calls.append(record.offset)
        if record.offset == self.offset and self.times > 0:
            self.times -= 1
            raise self.error
        await self.real(record)


async def _run(worker: Worker, handler: Any, records: list[SourceRecord]) -> Any:
    acked: list[int] = []

    async def written() -> None:
        acked.extend(r.offset for r in records)

    outcome = await worker.processor.on_batch(
        [(r, handler) for r in records], lambda _i: None, written
    )
    await worker.processor.drain()
    return outcome, acked


async def test_a_record_that_fails_a_few_times_is_processed_and_nothing_is_lost() -> None:
    worker = Worker()
    records = [_order(n) for n in range(3)]
    flaky = Flaky(worker.processor.on_order, 1, 2, RuntimeError("transient bug"))
    outcome, acked = await _run(worker, flaky, records)
    assert outcome.attempts == 3 and outcome.dead_lettered == []
    # every attempt processed the batch from its start, in order
    assert flaky.calls == [0, 1, 0, 1, 0, 1, 2]
    assert worker.waits == [backoff(2), backoff(3)] == [0.5, 1.0]
    assert acked == [0, 1, 2]
    assert worker.dead_letters.sent == []
    state = orjson.loads(worker.table[b"shop/c1"])["s"]
    assert sorted(state["orders"]) == ["o0", "o1", "o2"]
    # the transitions of the failed attempts were dropped: each went out once
    assert len(worker.sent()) == len(set(worker.sent()))
    assert worker.processor.retries.stuck == set()


async def test_a_record_that_keeps_failing_is_dead_lettered_and_the_rest_goes_on() -> None:
    worker = Worker()
    records = [_order(n) for n in range(3)]
    flaky = Flaky(worker.processor.on_order, 1, 1000, ValueError("poison"))
    outcome, acked = await _run(worker, flaky, records)
    assert outcome.attempts == MAX_ATTEMPTS + 1  # the last one dead-letters it
    assert [(r.offset, reason) for r, reason in outcome.dead_lettered] == [
        (1, f"failed {MAX_ATTEMPTS} times: ValueError('poison')")
    ]
    assert flaky.calls.count(1) == MAX_ATTEMPTS  # then dead-lettered, not called again
    assert acked == [0, 1, 2]  # processed or dead-lettered: every one accounted for
    assert [key for key, _ in worker.dead_letters.sent] == [b"c1"]
    state = orjson.loads(worker.table[b"shop/c1"])["s"]
    assert sorted(state["orders"]) == ["o0", "o2"]
    failures = {
        s.labels["kind"]: s.value
        for m in worker.processor.metrics.registry.collect()
        if m.name == "segmenter_record_failures"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert failures == {"record": MAX_ATTEMPTS, "dependency": 0}


async def test_a_failing_dependency_is_waited_for_and_never_dead_letters() -> None:
    worker = Worker()
    records = [_order(n) for n in range(2)]
    outage = MAX_ATTEMPTS * 3  # far more attempts than a record gets
    flaky = Flaky(worker.processor.on_order, 0, outage, RedisConnectionError("refused"))
    stuck_seen: list[set[Any]] = []
    waits = worker.processor.retries.wait

    async def watching(seconds: float) -> None:
        stuck_seen.append(set(worker.processor.retries.stuck))
        await waits(seconds)

    worker.processor.retries.wait = watching
    outcome, acked = await _run(worker, flaky, records)
    assert outcome.attempts == outage + 1 and outcome.dead_lettered == []
    assert worker.dead_letters.sent == []
    assert acked == [0, 1]
    assert stuck_seen and all(s == {("orders", 0)} for s in stuck_seen)
    assert max(worker.waits) == 30.0  # the backoff is capped
    assert worker.processor.retries.stuck == set()


async def test_a_batch_whose_partitions_were_taken_away_is_given_up() -> None:
    worker = Worker()
    records = [_order(0)]
    flaky = Flaky(worker.processor.on_order, 0, 1000, RuntimeError("bug"))
    owned = [True]

    async def rebalanced(seconds: float) -> None:
        owned[0] = False

    worker.processor.retries.wait = rebalanced
    outcome = await worker.processor.on_batch(
        [(r, flaky) for r in records], lambda _i: None, None, lambda: owned[0]
    )
    assert outcome is None
    assert worker.table == {} and worker.dead_letters.sent == []


async def test_a_full_disk_holds_the_commit_until_there_is_room() -> None:
    worker = Worker()
    put = worker.table.put_many
    full = [3]

    def put_many(rows: Any) -> None:
        if full[0]:
            full[0] -= 1
            raise OSError(28, "No space left on device")
        put(rows)

    worker.table.put_many = put_many  # type: ignore[method-assign]
    seen: list[bool] = []
    waits = worker.processor.checkpoint.wait

    async def watching(seconds: float) -> None:
        seen.append(worker.processor.disk_full)
        await waits(seconds)

    worker.processor.checkpoint.wait = watching
    _, acked = await _run(worker, worker.processor.on_order, [_order(0)])
    assert seen == [True, True, True]
    assert acked == [0] and b"shop/c1" in worker.table
    assert worker.processor.disk_full is False
    assert worker.failures == []  # the worker did not stop


async def test_a_full_disk_holds_the_insights_write_and_counts_nothing_twice() -> None:
    worker = Worker(insights=True)
    assert worker.insights is not None
    totals = worker.insights.totals
    put = totals.put_many
    calls = [0]

    def put_many(rows: Any) -> None:  # the second write of the totals finds the disk full
        calls[0] += 1
        put(rows)
        if calls[0] in (1, 2):
            raise OSError(28, "No space left on device")

    totals.put_many = put_many  # type: ignore[method-assign]
    _, acked = await _run(worker, worker.processor.on_order, [_order(0), _order(1, "c2")])
    assert acked == [0, 1] and worker.failures == []
    assert len(worker.waits) == 2 and calls[0] == 3  # tried again until it went through
    assert totals[b"0\x1fshop\x1fn"] == b"2"  # written three times, counted once
    assert b"shop/c1" in worker.table and b"shop/c2" in worker.table


@pytest.mark.parametrize(
    ("error", "dependency", "full"),
    [
        (RedisConnectionError("refused"), True, False),
        (OSError(28, "No space left on device"), True, True),
        (Exception("IO error: No space left on device: While appending to file"), True, True),
        (ValueError("bad"), False, False),
        (KeyError("x"), False, False),
    ],
)
def test_what_counts_as_a_dependency_failure(
    error: Exception, dependency: bool, full: bool
) -> None:
    assert dependency_failure(error) is dependency
    assert disk_full(error) is full


async def test_a_dead_letter_is_sent_once_however_often_its_batch_is_processed() -> None:
    worker = Worker()
    bad = SourceRecord(b"c1", b'{"type": "order_placed", "order_id": ', "orders", 0, 0)
    records = [bad, _order(1)]
    flaky = Flaky(worker.processor.on_order, 1, 3, RuntimeError("transient bug"))
    outcome, acked = await _run(worker, flaky, records)
    assert outcome.attempts == 4
    assert acked == [0, 1]
    assert worker.dead_letters.sent == [(b"c1", bad.value)]  # once, not at every attempt
    # a later batch dead-letters the same position again if it is read again (a replay)
    await _run(worker, worker.processor.on_order, [bad])
    assert len(worker.dead_letters.sent) == 2
