"""The processes the serving package starts (servers, compute workers): the environment they
run in, and how they are stopped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def child_environment(
    extra: Mapping[str, str] | None = None, project: str = ROOT
) -> dict[str, str]:
    """This process's environment with `extra`, and the project (this one, or the tree of
    another version of it) importable first (`PYTHONPATH`)."""
    environment = {**os.environ, **(extra or {})}
    path = [project, environment.get("PYTHONPATH")]
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    return environment


def stop(process: subprocess.Popen, seconds: float = 10.0) -> None:
    """Terminate a process, and kill it if it has not exited within `seconds`."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
