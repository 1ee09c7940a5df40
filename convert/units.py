"""Sizes in the units people read them in."""

from __future__ import annotations


def human_size(n: float) -> str:
    """Decimal units, as disk sizes are sold: 8_990_000_000 -> "8.99 GB", 3_400 -> "3.40 KB"."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
