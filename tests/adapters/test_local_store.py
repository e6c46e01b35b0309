"""Whether a worker keeps its local table store: only after a clean stop."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from streams.worker import CLEAN_SHUTDOWN, _trust_local_store


def store(tmp_path: Path) -> tuple[Settings, Path]:
    settings = Settings(data_dir=tmp_path)
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "customers-0.db").mkdir(parents=True)
    (tabledir / "customers-0.db" / "000004.log").write_bytes(b"state")
    return settings, tabledir


def test_a_store_left_by_a_crash_is_rebuilt(tmp_path: Path) -> None:
    settings, tabledir = store(tmp_path)
    marker = _trust_local_store(settings, tabledir)
    assert not tabledir.exists()
    assert marker == tmp_path / CLEAN_SHUTDOWN
    assert not marker.exists()


def test_a_store_left_by_a_clean_stop_is_kept_until_the_next_stop(tmp_path: Path) -> None:
    settings, tabledir = store(tmp_path)
    (tmp_path / CLEAN_SHUTDOWN).touch()
    marker = _trust_local_store(settings, tabledir)
    assert (tabledir / "customers-0.db" / "000004.log").read_bytes() == b"state"
    # running now: a crash from here on leaves no marker behind
    assert not marker.exists()


def test_a_first_start_has_nothing_to_rebuild(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new")
    marker = _trust_local_store(settings, tmp_path / "new" / "v1" / "tables")
    assert not marker.exists()
    assert not (tmp_path / "new").exists()
