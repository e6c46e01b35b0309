"""Command-line checks that need no servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from config.rules import DEFAULT_RULES_FILE
from streams.cli import main

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

    from streams.devstack import cluster_id

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
