"""The due index hands out each due customer once, per partition, earliest first."""

from __future__ import annotations

from streams.clock import DueIndex
from tests.factories import at


def test_pops_only_what_is_due_on_that_partition_in_time_order() -> None:
    index = DueIndex()
    index.schedule(0, "s/b", at(5))
    index.schedule(0, "s/a", at(3))
    index.schedule(1, "s/c", at(1))
    assert index.pop_due(0, at(4)) == [("s/a", at(3))]
    assert index.pop_due(0, at(4)) == []
    assert index.pop_due(0, at(10)) == [("s/b", at(5))]
    assert index.pop_due(1, at(10)) == [("s/c", at(1))]
    assert len(index) == 0


def test_a_rescheduled_customer_is_handed_out_at_the_new_time_only() -> None:
    index = DueIndex()
    index.schedule(0, "s/a", at(3))
    index.schedule(0, "s/a", at(8))  # a new order moved the due time
    assert index.pop_due(0, at(5)) == []
    assert index.pop_due(0, at(8)) == [("s/a", at(8))]
    index.schedule(0, "s/b", at(2))
    index.schedule(0, "s/b", None)  # nothing due any more
    assert index.pop_due(0, at(9)) == []


def test_event_time_watermark_never_goes_back() -> None:
    index = DueIndex()
    assert index.advance_watermark(0, at(5)) == at(5)
    assert index.advance_watermark(0, at(2)) == at(5)
    assert index.advance_watermark(1, at(1)) == at(1)


def test_overdue_lists_only_current_due_times_before_the_instant() -> None:
    index = DueIndex()
    for i in range(50):
        index.schedule(i % 3, f"s/c{i}", at(i))
    index.schedule(0, "s/c0", at(100))  # moved: its old entry at day 0 is stale
    assert sorted(index.overdue(at(5))) == [at(1), at(2), at(3), at(4)]
    assert index.overdue(at(0)) == []
