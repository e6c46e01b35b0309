"""Prints the fault-injection summary table at the end of the run."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.test_faults import RESULTS

    if not RESULTS:
        return
    columns = list(dict.fromkeys(c for row in RESULTS for c in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in RESULTS)) for c in columns}
    terminalreporter.section("fault injection")
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in columns))
    for row in RESULTS:
        terminalreporter.write_line(
            "  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns)
        )
