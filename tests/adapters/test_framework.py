"""The package that reaches into Faust's and aiokafka's internals runs only on the versions it
was tested with, and is the only one that does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from config.rules import load_rules
from config.settings import Settings
from streams import framework
from streams.app import create_app
from streams.framework import TESTED, UnsupportedFramework, check_versions

ROOT = Path(__file__).resolve().parents[2]
INTERNAL_MODULES = ("faust.transport", "faust.tables", "faust.stores", "faust.streams", "mode")


def _versions(**found: str | None) -> object:
    versions = {name: f"{series}.3" for name, series in TESTED.items()}
    versions.update({name.replace("_", "-"): v for name, v in found.items()})
    return versions.get


def test_the_tested_versions_pass() -> None:
    check_versions(_versions())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "version"),
    [("faust_streaming", "0.16.0"), ("aiokafka", "0.13.1"), ("mode_streaming", None)],
)
def test_another_version_is_refused_naming_what_was_found_and_what_is_supported(
    name: str, version: str | None
) -> None:
    with pytest.raises(UnsupportedFramework) as refused:
        check_versions(_versions(**{name: version}))  # type: ignore[arg-type]
    message = str(refused.value)
    distribution = name.replace("_", "-")
    assert f"{distribution} {version or 'missing'} (tested: {TESTED[distribution]}.x)" in message
    assert "pip install" in message


def test_a_worker_is_not_built_on_an_untested_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framework, "_installed", _versions(faust_streaming="0.16.1"))
    monkeypatch.setattr(framework, "check_versions", lambda: check_versions(framework._installed))
    with pytest.raises(UnsupportedFramework, match=r"faust-streaming 0\.16\.1"):
        create_app(Settings(web_port=0), load_rules(), 2, {})


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _private_attributes(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (a private part of another object)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os"))
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    return found


def test_only_the_framework_package_touches_faust_and_aiokafka_internals() -> None:
    outside = [
        p
        for p in sorted((ROOT / "streams").rglob("*.py"))
        if "framework" not in p.relative_to(ROOT / "streams").parts
    ]
    assert outside
    internal_imports = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in outside
        for name in _imports(p)
        if any(name == m or name.startswith(m + ".") for m in INTERNAL_MODULES)
    ]
    assert internal_imports == []
    assert [a for p in outside for a in _private_attributes(p)] == []
