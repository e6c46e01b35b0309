"""The worker's local data directory: one worker at a time, and its table store kept only after a
clean stop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from config.settings import Settings
from streams.cli import main
from streams.local_store import CLEAN_SHUTDOWN, DataDirInUse, lock_data_dir, trust_local_store


def store(tmp_path: Path) -> tuple[Settings, Path]:
    settings = Settings(data_dir=tmp_path)
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "customers-0.db").mkdir(parents=True)
    (tabledir / "customers-0.db" / "000004.log").write_bytes(b"state")
    return settings, tabledir


def test_a_store_left_by_a_crash_is_rebuilt(tmp_path: Path) -> None:
    settings, tabledir = store(tmp_path)
    marker = trust_local_store(settings, tabledir)
    assert not tabledir.exists()
    assert marker == tmp_path / CLEAN_SHUTDOWN
    assert not marker.exists()


def test_a_store_left_by_a_clean_stop_is_kept_until_the_next_stop(tmp_path: Path) -> None:
    settings, tabledir = store(tmp_path)
    (tmp_path / CLEAN_SHUTDOWN).touch()
    marker = trust_local_store(settings, tabledir)
    assert (tabledir / "customers-0.db" / "000004.log").read_bytes() == b"state"
    # running now: a crash from here on leaves no marker behind
    assert not marker.exists()


def test_a_first_start_has_nothing_to_rebuild(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new")
    marker = trust_local_store(settings, tmp_path / "new" / "v1" / "tables")
    assert not marker.exists()
    assert not (tmp_path / "new").exists()


def test_a_second_worker_on_the_same_data_directory_is_refused_naming_it(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path)
    try:
        with pytest.raises(DataDirInUse) as refused:
            lock_data_dir(tmp_path)
        message = str(refused.value)
        assert str(tmp_path.resolve()) in message
        assert f"pid {os.getpid()}" in message
        assert "SEGMENTER_DATA_DIR" in message
    finally:
        first.close()
    lock_data_dir(tmp_path).close()  # free again once the first worker is gone


def test_the_worker_command_refuses_a_data_directory_in_use_before_it_connects(
    tmp_path: Path,
) -> None:
    held = lock_data_dir(tmp_path)
    try:
        env = {
            "SEGMENTER_DATA_DIR": str(tmp_path),
            "SEGMENTER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached
            "SEGMENTER_STARTUP_TIMEOUT_SECONDS": "0",
        }
        result = CliRunner().invoke(main, ["worker"], env=env)
    finally:
        held.close()
    assert result.exit_code == 1
    assert f"the data directory {tmp_path.resolve()} is in use" in result.output
    assert "Traceback" not in result.output
