"""The processes the serving package starts (servers, compute workers): the environment they
run in, and how they are stopped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with `extra`, and the project importable (`PYTHONPATH`)."""
    environment = {**os.environ, **(extra or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, environment.get("PYTHONPATH")]))
    return environment


def stop(process: subprocess.Popen, seconds: float = 10.0) -> None:
    """Terminate a process, and kill it if it has not exited within `seconds`."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
