"""How a Dagster error reads in one line: the error that started the chain, without the module
path Dagster's messages carry. Shared by the failures a command prints and the alerts."""

from __future__ import annotations

from dagster._utils.error import SerializableErrorInfo


def innermost(error: SerializableErrorInfo) -> SerializableErrorInfo:
    """The error that started a chain: what the user's code (or ours) raised."""
    while error.cause is not None:
        error = error.cause
    return error


def error_text(error: SerializableErrorInfo) -> str:
    """`Class: message` of an error, without the module path Dagster's message starts with."""
    module, found, message = error.message.strip().partition(f"{error.cls_name}: ")
    if not found or " " in module:  # the message is not `package.module.Class: text`
        message = error.message.strip()
    return f"{error.cls_name}: {message}"
