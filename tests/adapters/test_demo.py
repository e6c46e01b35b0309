"""The demo's closing hint: the command it prints finds one of the demo's customers."""

from __future__ import annotations

import shlex
import sys

import pytest

from config.settings import Settings
from streams.cli import main
from streams.cli.demo import DEMO, _featured_customer, _program, customer_command
from streams.cli.sample_data import sample_events


@pytest.mark.parametrize("customers", [40, 5])
def test_the_printed_customer_command_reads_what_the_demo_wrote(
    customers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    featured = _featured_customer(customers)
    assert featured is not None
    words = shlex.split(customer_command(featured))
    assignments = [w for w in words if "=" in w and w.startswith("SEGMENTER_")]
    program, *args = words[len(assignments) :]
    assert program == "segmenter"

    for assignment in assignments:
        monkeypatch.setenv(*assignment.split("=", 1))
    looked_up = Settings()  # what the pasted command reads with
    demo = Settings(**DEMO)  # type: ignore[arg-type]  # what the demo's worker writes with
    assert looked_up.redis_prefix == demo.redis_prefix
    assert looked_up.app_id == demo.app_id  # the changelog that --json reads

    command = main.commands[args[0]]
    params = command.make_context(args[0], args[1:]).params
    orders = [e for e in sample_events(customers) if e["customer_id"] == params["customer_id"]]
    assert orders, "the printed customer is not in the demo's sample"
    assert {e.get("shop_id", "default") for e in orders} == {params["shop"]}


def test_the_featured_customer_is_the_one_the_readme_follows() -> None:
    assert _featured_customer(40) == "c008-lapsing"
    assert _featured_customer(0) is None


def test_the_program_is_named_as_it_can_be_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [".venv/bin/segmenter", "demo"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert _program() == ".venv/bin/segmenter"  # make demo, without the venv on the PATH
    assert shlex.split(customer_command("c1", _program()))[-3] == ".venv/bin/segmenter"
    monkeypatch.setattr(sys, "argv", ["/x/streams/cli/__main__.py", "demo"])
    assert _program() == "segmenter"
