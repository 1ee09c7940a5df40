"""Errors the pipeline reports to the user as one readable line (no traceback unless --debug)."""

from __future__ import annotations


class ConversionError(Exception):
    """Bad input or a failed step; str(error) is a complete sentence naming what was wrong."""


def one_line(error: BaseException) -> str:
    """An error as one line: an OSError's reason and file (not "[Errno 28] ..."), else its text."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())
