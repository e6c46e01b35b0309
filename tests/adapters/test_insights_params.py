"""The insights API's answers to query parameters and paths it must refuse or survive."""

from __future__ import annotations

from datetime import date

from streams.insights.api import _period


def test_a_period_ending_in_the_first_days_of_year_one_starts_on_its_first_day() -> None:
    # The default start (29 days before the end) lay before 0001-01-01: OverflowError, a 500.
    period = _period(None, date(1, 1, 10))
    assert (period.start, period.end) == (date.min, date(1, 1, 10))
    assert _period(date(1, 1, 2), date(1, 1, 3)).start == date(1, 1, 2)
