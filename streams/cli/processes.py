"""The devstack's processes: started detached, waited for, signalled and reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path


class DevstackError(RuntimeError):
    """The devstack cannot start; the message says what is missing and how to get it."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    condition: Callable[[], bool], pid: int, timeout: float, what: str, logs: list[Path]
) -> None:
    """Wait until ``condition`` holds; fail at once if the process ``pid`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        reap(pid)
        if not pid_alive(pid):
            raise DevstackError(f"{what} exited during start-up;\n{tails(logs)}")
        time.sleep(0.2)
    raise DevstackError(f"{what} did not come up within {timeout:.0f}s;\n{tails(logs)}")


def tails(logs: list[Path]) -> str:
    return "\n".join(
        f"end of {log}:\n{log.read_text(errors='replace')[-1500:]}" for log in logs if log.exists()
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
