"""Where a definition was written, so errors can point users at file and line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def relative_path(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def caller_location(depth: int = 2) -> str:
    """`file:line` of the code that called the constructor calling this (past generated frames)."""
    frame = sys._getframe(depth)
    while frame is not None and frame.f_code.co_filename.startswith("<"):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{relative_path(frame.f_code.co_filename)}:{frame.f_lineno}"


def function_location(fn: Callable) -> str:
    """`file:line` of a function's definition."""
    code = fn.__code__
    return f"{relative_path(code.co_filename)}:{code.co_firstlineno}"
