"""The peers of the benchmark: the same job written with another stream-processing library,
run on the same records in the same run (``bench/quix_peer.py``: Quix Streams).

Quix Streams pins pydantic and pydantic-settings below the versions the product uses, so it
cannot share the product's environment: the benchmark makes an environment of its own for it
(``.bench/quix-venv``, once, with pip from the package index: ``QUIX_REQUIREMENTS``) and runs
the peer there as a script that imports nothing of the product.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
QUIX_REQUIREMENTS = ("quixstreams==3.28.1", "redis[hiredis]>=5.2,<9")
PEER_TIMEOUT_SECONDS = 900


def quix_python(workdir: Path) -> Path:
    """The interpreter of the peer's environment, made (once) if there is none."""
    venv = workdir / "quix-venv"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    wanted = "\n".join(QUIX_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *QUIX_REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


async def run_quix(
    workdir: Path,
    name: str,
    bootstrap: str,
    topic: str,
    out_topic: str,
    expected: int,
    redis_port: int,
) -> tuple[int, float]:
    """Run the Quix Streams peer on ``expected`` records of ``topic``: (records, seconds).
    Its Redis keys start with ``name:``, its topics (output, changelog) with ``name``."""
    workdir = workdir.resolve()
    python = await asyncio.to_thread(quix_python, workdir)
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    result = data_dir / "result.json"
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(ROOT / "bench" / "quix_peer.py"),
            bootstrap,
            topic,
            out_topic,
            str(expected),
            str(data_dir / "state"),
            str(redis_port),
            name,
            str(result),
            stdout=out,
            stderr=out,
            cwd=data_dir,
        )
        try:
            code = await asyncio.wait_for(process.wait(), PEER_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"the Quix Streams peer did not finish within {PEER_TIMEOUT_SECONDS} s; see {log}"
            ) from None
    if code != 0 or not result.exists():
        raise RuntimeError(f"the Quix Streams peer failed (exit {code}); see {log}")
    figures = orjson.loads(result.read_bytes())
    return int(figures["records"]), float(figures["seconds"])
