"""Shared fixtures: the real devstack (started if needed), per-test isolated settings and
helpers that wait on conditions with a timeout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from config.settings import DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT, Settings
from streams.cli.devstack import Devstack
from streams.cli.processes import unused_port
from streams.cli.secure_kafka import SecureKafka
from streams.cli.secure_redis import SecureRedis

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@pytest.fixture(scope="session")
def devstack() -> Iterator[Devstack]:
    """The local Kafka and Redis; started for the session unless already running."""
    stack = Devstack(ROOT / ".devstack", DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT)
    already_up = any(s.running for s in stack.status())  # leave alone what we did not start
    stack.up(say=print)
    yield stack
    if not already_up:
        stack.down(say=print)


@pytest.fixture
def isolated(devstack: Devstack, tmp_path: Path) -> dict[str, str]:
    """``SEGMENTER_*`` overrides with topic, group and Redis names unique to one test."""
    uid = uuid.uuid4().hex[:10]
    return {
        "app_id": f"test-{uid}",
        "orders_topic": f"test-{uid}.orders",
        "transitions_topic": f"test-{uid}.segment-transitions",
        "dlq_topic": f"test-{uid}.orders-dlq",
        "consent_topic": f"test-{uid}.customer-consent",
        "erasure_topic": f"test-{uid}.customer-erasure",
        "erasure_receipts_topic": f"test-{uid}.customer-erasure-receipts",
        "redis_prefix": f"test-{uid}:",
        "marketing_topic_prefix": f"test-{uid}.",
        "data_dir": str(tmp_path / "worker-data"),
        "web_port": "0",
        "partitions": "1",
        "clock": "event",
        "log_level": "info",
    }


@pytest.fixture(scope="session")
def secure_kafka(devstack: Devstack) -> Iterator[SecureKafka]:
    """The secured Kafka (SASL_SSL, SCRAM, ACLs); started for the session unless running."""
    secured = SecureKafka(devstack)
    already_up = secured.answers()
    secured.up(say=print)
    yield secured
    if not already_up:
        secured.down(say=print)


@pytest.fixture(scope="session")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    """A secured Redis (a password, an ACL user limited to ``segmenter:*``, TLS where the
    server has it) of the test session's own, on free ports."""
    root = tmp_path_factory.mktemp("secure-devstack")
    stack = SecureRedis(
        Devstack(root, DEVSTACK_KAFKA_PORT, DEVSTACK_REDIS_PORT), free_port(), free_port()
    )
    stack.up(say=print)
    try:
        yield stack
    finally:
        stack.down(say=print)


# The settings that name topics, groups and Redis keys.
NAMES = (
    "app_id",
    "orders_topic",
    "transitions_topic",
    "dlq_topic",
    "consent_topic",
    "erasure_topic",
    "erasure_receipts_topic",
    "redis_prefix",
    "marketing_topic_prefix",
)


@pytest.fixture
def secured(secure_kafka: SecureKafka, isolated: dict[str, str]) -> dict[str, str]:
    """``isolated`` on the secured Kafka as its ``segmenter`` user: the names moved under the
    product's prefix, which that user's ACLs grant."""
    renamed = {k: f"segmenter-{v}" if k in NAMES else v for k, v in isolated.items()}
    return {**renamed, **secure_kafka.client_settings()}


def settings_from(overrides: dict[str, str]) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``probe`` until ``done(result)``; fail with the last result after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if done(last):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing holds right now, outside the range the kernel gives
    outgoing connections (so none of them takes it before the server binds it)."""
    return unused_port()


def cli_result(overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``segmenter ARGS`` with ``SEGMENTER_*`` overrides, whatever its exit status."""
    env = {**os.environ, **{f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()}}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def run_cli(overrides: dict[str, str], *args: str) -> str:
    """Run ``segmenter ARGS`` with ``SEGMENTER_*`` overrides; returns stdout, fails on error."""
    env = {**os.environ, **{f"SEGMENTER_{k.upper()}": v for k, v in overrides.items()}}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
