"""Wall clock: a due time passes for a partition only once its orders up to that instant have
been read. A worker behind its input (a restart, a stop, a burst) must not find a customer
inactive whose next order is still waiting in the backlog."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from config.rules import load_rules
from models.frozen import evolve
from streams import clock as clocks
from streams.clock import tick
from streams.codecs import decode_stored
from streams.dlq import SourceRecord
from streams.processor import Processor
from tests.adapters.fakes import Worker
from tests.factories import T0, placed

RULES = load_rules()
# The single order's customer is due (inactive) this long after the order.
DUE = T0 + timedelta(days=RULES.inactivity.single_order_days)
NOW = DUE + timedelta(days=30)  # the wall clock: long past the due time


class Input:
    """The consumer's view of the orders partitions: (end offset, committed offset), or None
    (not known yet)."""

    def __init__(self) -> None:
        self.positions: dict[int, tuple[int, int | None] | None] = {}

    def __call__(self, partition: int) -> tuple[int, int | None] | None:
        return self.positions.get(partition)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The processor's monotonic clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(clocks, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _worker(input_end: Any) -> Worker:
    return Worker(clock="wall", input_end=input_end, rules=RULES, backfill=False)


def _processor(input_end: Any) -> Processor:
    return _worker(input_end).processor


def _order(customer: str, offset: int, published: datetime) -> SourceRecord:
    """A single order of ``customer``, placed the moment it was published."""
    day = (published - T0) / timedelta(days=1)
    value = orjson.dumps(placed(customer, f"{customer}-{offset}", day))
    return SourceRecord(customer.encode(), value, "orders", 0, offset, published.timestamp())


async def _process(processor: Processor, *records: SourceRecord) -> None:
    await processor.on_batch([(r, processor.on_order) for r in records], lambda _i: None)
    await processor.drain()


def _ticked(ticks: list[tuple[int, bytes]]) -> list[tuple[int, str, str]]:
    return [(p, orjson.loads(t)["key"], orjson.loads(t)["now"]) for p, t in ticks]


async def test_due_times_wait_for_the_orders_published_before_them(clock: list[float]) -> None:
    inputs = Input()
    processor = _processor(inputs)
    inputs.positions[0] = (5, None)  # five orders in the partition, none committed
    # The single order's customer, published the moment it was placed: due at DUE.
    await _process(processor, _order("ann", 0, T0))
    key = "default/ann"
    assert processor.clock.index.overdue(NOW) == [DUE]

    # Four orders wait, the last one read was published long before the due time: held.
    assert processor.clock.read_until(0, NOW) == T0
    assert processor.clock.due_ticks(NOW) == []

    # Read up to an order published a day before the due time: still held.
    await _process(processor, _order("bob", 1, DUE - timedelta(days=1)))
    assert processor.clock.due_ticks(NOW) == []

    # Read up to an order published after it: ann's due time has passed by then, and her
    # tick carries that instant, not the wall clock (what comes after it is still unread).
    published = DUE + timedelta(hours=2)
    await _process(processor, _order("cy", 2, published))
    assert _ticked(processor.clock.due_ticks(NOW)) == [(0, key, published.isoformat())]
    assert processor.clock.in_flight == {key: DUE}


async def test_a_partition_read_to_its_end_goes_by_the_wall_clock(clock: list[float]) -> None:
    inputs = Input()
    processor = _processor(inputs)
    inputs.positions[0] = (1, None)
    await _process(processor, _order("ann", 0, T0))  # the partition's only order
    assert processor.clock.read_until(0, NOW) == NOW
    assert _ticked(processor.clock.due_ticks(NOW)) == [(0, "default/ann", NOW.isoformat())]


async def test_committed_offsets_count_as_read(clock: list[float]) -> None:
    """After a restart on a partition whose orders were all processed before it: nothing is
    waiting although this process has read none."""
    inputs = Input()
    processor = _processor(inputs)
    inputs.positions[0] = (7, 7)
    assert processor.clock.read_until(0, NOW) == NOW
    inputs.positions[0] = (9, 7)  # two orders came in since: held until one is read
    assert processor.clock.read_until(0, NOW) is None
    assert processor.clock.read_until(1, NOW) is None  # no end offset known yet: held


async def test_a_partition_that_waits_without_progress_goes_by_the_wall_clock_after_a_while(
    clock: list[float],
) -> None:
    """Offsets that never close (a transaction marker at the log's end, fetching paused)
    hold the partition's due times for ``STALLED_SECONDS`` after its last progress."""
    inputs = Input()
    processor = _processor(inputs)
    inputs.positions[0] = (3, None)
    await _process(processor, _order("ann", 0, T0))
    assert processor.clock.due_ticks(NOW) == []
    clock[0] += clocks.STALLED_SECONDS - 1
    assert processor.clock.due_ticks(NOW) == []
    await _process(processor, _order("bob", 1, T0 + timedelta(days=1)))  # progress: wait again
    clock[0] += clocks.STALLED_SECONDS - 1
    assert processor.clock.due_ticks(NOW) == []
    clock[0] += 2
    assert _ticked(processor.clock.due_ticks(NOW)) == [
        (0, "default/ann", NOW.isoformat()),
        (0, "default/bob", NOW.isoformat()),
    ]


async def test_without_a_view_of_the_input_due_times_go_by_the_wall_clock() -> None:
    processor = _processor(None)
    await _process(processor, _order("ann", 0, T0))
    assert processor.clock.read_until(0, NOW) == NOW
    assert _ticked(processor.clock.due_ticks(NOW)) == [(0, "default/ann", NOW.isoformat())]


async def test_positions_are_forgotten_when_partitions_are_assigned_again(
    clock: list[float],
) -> None:
    """After a rebalance the partition may have been read further elsewhere: what this process
    read before counts no more (the committed offset tells)."""
    inputs = Input()
    processor = _processor(inputs)
    inputs.positions[0] = (4, None)
    await _process(processor, _order("ann", 0, DUE + timedelta(days=1)))
    assert processor.clock.read_until(0, NOW) == DUE + timedelta(days=1)
    await processor.rebuild_index()
    assert processor.clock.read_until(0, NOW) is None  # three orders wait, none read since
    inputs.positions[0] = (4, 4)
    assert processor.clock.read_until(0, NOW) == NOW


async def test_a_reevaluation_catches_up_with_time_only_as_far_as_the_orders_are_read(
    clock: list[float],
) -> None:
    """A new rule set re-evaluates every customer; in wall-clock mode its catch-up with time
    stops where the partition's orders are read, like the due times do."""
    inputs = Input()
    worker = _worker(inputs)
    processor = worker.processor
    inputs.positions[0] = (5, None)
    await _process(processor, _order("ann", 0, T0))  # due (inactive) at DUE
    processor.models.rules = evolve(RULES, version="rfm-next")  # a new rule set, the same rules
    processor.models.forget_models()
    record = SourceRecord(b"default/ann", tick("reevaluate", "default/ann", None), "clock", 0, 0)
    await processor.on_batch([(record, processor.on_tick)], lambda _i: None)
    await processor.drain()
    state = decode_stored(worker.table[b"default/ann"]).state
    assert state.rule_version == "rfm-next"
    assert state.segment == "new"  # not inactive: her next order may be waiting
    assert processor.clock.index.overdue(NOW) == [DUE]  # the due time is held, not lost


async def test_a_pause_starts_the_wait_for_progress_again(clock: list[float]) -> None:
    inputs = Input()
    processor = _processor(inputs)
    inputs.positions[0] = (3, None)
    await _process(processor, _order("ann", 0, T0))
    assert processor.clock.due_ticks(NOW) == []  # behind: held
    inputs.positions[0] = None  # paused (an operator's /pause, a recovery)
    clock[0] += 10 * clocks.STALLED_SECONDS
    assert processor.clock.due_ticks(NOW) == []
    inputs.positions[0] = (3, None)  # resumed, still behind: the pause is not a stall
    assert processor.clock.due_ticks(NOW) == []
    clock[0] += clocks.STALLED_SECONDS + 1
    assert len(processor.clock.due_ticks(NOW)) == 1
