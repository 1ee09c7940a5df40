"""Errors the pipeline reports to the user as one readable line (no traceback unless --debug)."""

from __future__ import annotations


class ConversionError(Exception):
    """Bad input or a failed step; str(error) is a complete sentence naming what was wrong."""
