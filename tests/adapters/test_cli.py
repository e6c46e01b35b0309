"""Command-line checks that need no servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError

from config.rules import DEFAULT_RULES_FILE
from streams.cli import main
from streams.cli.group import Commands
from tests.conftest import free_port

GAP = DEFAULT_RULES_FILE.read_text().replace(
    "    when: {r: [1, 1], f: [1, 2]}", "    when: {r: [1, 1], f: [1, 1]}"
)


def test_rules_check_passes_the_default_map() -> None:
    result = CliRunner().invoke(main, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert "14 segments, every one reachable, all 500" in result.output


def test_rules_check_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "gap.yaml"
    path.write_text(GAP)
    result = CliRunner().invoke(main, ["rules", "check", str(path)])
    assert result.exit_code == 1
    assert "5 combinations no rule covers: r=1 f=2 m=1 (active, repeat buyer)" in result.output


def test_the_worker_refuses_a_rule_set_with_gaps_before_it_connects(tmp_path: Path) -> None:
    path = tmp_path / "gap.yaml"
    path.write_text(GAP)
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env={"SEGMENTER_RULES_FILE": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "combinations no rule covers" in result.stderr


def test_cluster_ids_never_look_like_an_option() -> None:
    import base64

    from streams.cli.devstack import cluster_id

    ids = [cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)


def test_tests_isolate_every_topic() -> None:
    from config.settings import Settings
    from tests.conftest import ROOT

    conftest = (ROOT / "tests" / "conftest.py").read_text()
    for name in Settings.model_fields:
        if name.endswith("_topic") or name.endswith("_prefix"):
            assert f'"{name}": f"test-{{uid}}' in conftest, name


@pytest.mark.parametrize(
    ("command", "service", "setting"),
    [
        (["lag"], "Kafka", "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS"),
        (["recalibrate"], "Kafka", "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS"),
        (["forget", "c1", "--no-wait"], "Kafka", "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS"),
        (["segments"], "Redis", "SEGMENTER_REDIS_URL"),
        (["customer", "c1"], "Redis", "SEGMENTER_REDIS_URL"),
    ],
)
def test_a_server_that_cannot_be_reached_is_named_without_a_traceback(
    command: list[str], service: str, setting: str
) -> None:
    port = free_port()  # nothing listens there
    env = {
        "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "SEGMENTER_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", *command],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"Error: {service} at 127.0.0.1:{port}: " in result.stderr
    assert setting in result.stderr
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr  # the clients that could not start are closed
    assert "hunter2" not in result.stderr


def test_invalid_settings_are_named_without_a_traceback() -> None:
    result = CliRunner().invoke(main, ["lag"], env={"SEGMENTER_PARTITIONS": "many"})
    assert result.exit_code == 1
    assert "invalid SEGMENTER_* settings: SEGMENTER_PARTITIONS: " in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, the variable named


def test_an_unknown_variable_is_named_without_its_value() -> None:
    result = CliRunner().invoke(main, ["lag"], env={"SEGMENTER_SASL_PASSWORD": "hunter2"})
    assert result.exit_code == 1
    assert "unknown environment variable(s) SEGMENTER_SASL_PASSWORD" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_a_records_validation_error_is_not_called_a_settings_error() -> None:
    """Only the settings' validation errors are reported as invalid settings; one of a stored
    record (a bug to see in full) keeps its traceback."""

    class Stored(BaseModel):
        revision: int

    @click.group(cls=Commands)
    def group() -> None: ...

    @group.command()
    def read() -> None:
        Stored.model_validate({"revision": "many"})

    result = CliRunner().invoke(group, ["read"])
    assert isinstance(result.exception, ValidationError)
    assert "invalid SEGMENTER_* settings" not in result.output


def test_an_untested_faust_is_refused_with_one_line_naming_the_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams import framework

    monkeypatch.setattr(
        framework, "_installed", lambda name: "0.16.0" if name == "faust-streaming" else None
    )
    # a broker that does not answer: refused before anything connects
    env = {
        "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "SEGMENTER_STARTUP_TIMEOUT_SECONDS": "0",
    }
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code == 1
    assert "faust-streaming 0.16.0 (tested: 0.15.x)" in result.output
    assert "Traceback" not in result.output


def test_customer_json_scores_with_the_calibration_the_worker_uses() -> None:
    """A published calibration counts only in quantile mode, as in the worker: in fixed mode
    the rule file's cut-offs score the customer."""
    import orjson

    from config.rules import load_rules
    from models.frozen import evolve
    from models.scoring import Calibration
    from models.segment_model import bootstrap_calibration
    from models.state import compute_metrics
    from streams.cli.inspection import _state_json
    from streams.shop_models import ShopModels
    from tests.factories import placed
    from tests.unit.core import fold

    rules = load_rules()
    base = bootstrap_calibration(rules, "default")
    high = (10**9, 2 * 10**9, 3 * 10**9, 4 * 10**9)  # nobody reaches m above 1
    published = Calibration(
        shop_id="default",
        version="q-test",
        method="quantile",
        cutoffs=base.cutoffs.model_copy(update={"monetary": high}),
    )
    state, _ = fold([placed("c1", "o1", 0, total=90_000), placed("c1", "o2", 5, total=90_000)])
    for mode, calibration in (("fixed", base), ("quantile", published)):
        ruled = evolve(rules, scoring=evolve(rules.scoring, mode=mode))
        shown = orjson.loads(_state_json(state, ShopModels(ruled, {"default": published})))
        expected = compute_metrics(state, state.as_of, ruled, calibration)
        assert shown["metrics"] == orjson.loads(orjson.dumps(expected.model_dump(mode="json")))
    assert compute_metrics(state, state.as_of, rules, base) != compute_metrics(
        state, state.as_of, rules, published
    )  # the two calibrations do score this customer differently


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["forget", ""], "customer_id: String should have at least 1 character"),
        (["forget", "a\x1b[2Jb"], "customer_id: contains the control character U+001B"),
        (["forget", "c1", "--shop", "a/b"], "shop_id: String should match pattern"),
    ],
)
def test_forget_refuses_ids_no_worker_could_take_before_sending(args: list[str], why: str) -> None:
    # Sent, such a request was dead-lettered by every worker, and the command waited a minute
    # for receipts before asking whether a worker was running.
    port = free_port()  # nothing listens there: the command must not get as far as Kafka
    result = CliRunner().invoke(
        main, args, env={"SEGMENTER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    )
    assert result.exit_code == 2, result.output
    assert "no worker could take this erasure request (" in result.output
    assert why in result.output
    assert "not sent" in result.output
    assert "\x1b" not in result.output


@pytest.mark.parametrize("timeout", ["-5", "0", "nan", "inf"])
def test_forget_refuses_a_timeout_that_is_no_wait(timeout: str) -> None:
    # A negative or NaN timeout sent the request, then said at once that no receipt came.
    port = free_port()  # nothing listens there: the command must not get as far as Kafka
    result = CliRunner().invoke(
        main,
        ["forget", "c1", "--timeout", timeout],
        env={"SEGMENTER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout'" in result.output
    assert "is not a number of seconds above 0" in result.output


@pytest.mark.parametrize("port", ["0", "-1", "65536", "99999"])
def test_api_refuses_a_port_that_is_none(port: str) -> None:
    # --port 99999 or -1 went to the server as it was (SEGMENTER_API_PORT is checked for
    # 1..65535); --port 0 quietly meant SEGMENTER_API_PORT.
    result = CliRunner().invoke(
        main, ["api", "--port", port], env={"SEGMENTER_API_TOKEN": "a-token-of-16-bytes-or-more"}
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port'" in result.output
    assert "1<=x<=65535" in result.output
