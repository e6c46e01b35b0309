"""docs/operations.md gives the ACL rules the product needs exactly as the code has them."""

from __future__ import annotations

from pathlib import Path

from streams.redis_client import ACL_COMMANDS, acl_rules

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_acl_rules_are_the_codes() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"ACL SETUSER segmenter on >PASSWORD {acl_rules('segmenter:')}" in operations
    section = operations.split("## Running against your Redis", 1)[1].split("\n## ", 1)[0]
    for command in ACL_COMMANDS:  # each one explained
        assert f"`{command.upper()}`" in section, command
