"""The devstack's processes: started detached, waited for, signalled and reaped."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

START_TIMEOUT_SECONDS: Final = 90.0
# Ports picked for trial servers start above the devstack's fixed ones (16379-19193).
PICKED_PORTS_FROM: Final = 20_000


class DevstackError(RuntimeError):
    """The devstack cannot start; the message says what is missing and how to get it."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux; the IANA range
    elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49_152, 65_535


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def unused_port(*offsets: int, taken: tuple[int, ...] = ()) -> int:
    """A port on 127.0.0.1 that nothing holds right now, nor ``port + offset`` for each
    offset (a Redis cluster node's bus port is its port + 10,000). It lies outside the
    kernel's range for outgoing connections, so no client socket can take it between now
    and the server's bind, as happened with ports the kernel picked ("Address already in
    use" at start-up)."""
    low, high = _ephemeral_range()
    spread = max((0, *offsets))
    candidates = [
        port
        for first, last in ((PICKED_PORTS_FROM, low - 1 - spread), (high + 1, 65_535 - spread))
        for port in range(first, last + 1)
    ]
    if not candidates:
        raise DevstackError(f"no port outside the outgoing range {low}-{high} to start on")
    for _ in range(1_000):
        port = random.choice(candidates)
        wanted = [port + offset for offset in (0, *offsets)]
        if not set(wanted) & set(taken) and all(_bindable(each) for each in wanted):
            return port
    raise DevstackError(f"no free port found outside the outgoing range {low}-{high}")


def start_detached(command: list[str], out: Path, pid_file: Path | None = None) -> int:
    """Start ``command`` in a session of its own, its output appended to ``out``; its pid is
    written to ``pid_file`` when given, and returned."""
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if pid_file is not None:
        pid_file.write_text(str(proc.pid))
    return proc.pid


def already_up(
    answers: Callable[[], bool],
    starting: Callable[[], int | None],
    what: str,
    logs: list[Path],
) -> bool:
    """True when the server answers, or was started earlier and is still coming up (then wait
    for it); false when it is to be started."""
    if answers():
        return True
    pid = starting()
    if pid is None:
        return False
    wait_until(answers, pid, START_TIMEOUT_SECONDS, what, logs)
    return True


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


def recorded_pid(pid_file: Path, marker: bytes) -> int | None:
    """The pid in ``pid_file``, if that process is alive and its command line holds ``marker``
    (it is the server that was started, not another process that got its pid)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline and pid_alive(pid) else None


def stop_recorded(
    pid_file: Path,
    marker: bytes,
    name: str,
    say: Callable[[str], None],
    timeout: float,
    poll: float,
) -> None:
    """Stop the server recorded in ``pid_file`` (see :func:`recorded_pid`) and forget it."""
    pid = recorded_pid(pid_file, marker)
    if pid is not None:
        say(f"stopping {name} (pid {pid}) ...")
        signal_group(pid, signal.SIGTERM)
        await_exit(pid, timeout, poll)
    pid_file.unlink(missing_ok=True)


def await_exit(pid: int, timeout: float, poll: float) -> None:
    """Wait up to ``timeout`` for a signalled process to exit; then kill its process group."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(poll)
    if pid_alive(pid):
        signal_group(pid, signal.SIGKILL)


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
