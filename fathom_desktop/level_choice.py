"""Which quantization level to run: the best one that fits.

The rule: among the levels that fit fully on the GPU, the one that loses the least quality;
when none fits fully, the least lossy of those that run with part of their layers on the GPU;
with no usable GPU, the least lossy that fits in memory. Quality lost is the measured KL
divergence against the BF16 reference (`fathom-convert evaluate`) when every candidate has been
measured; otherwise the file size stands in for it (within one model's ladder, a larger level
keeps more of the model), and the reason says the quality was not measured yet.

No widgets and no I/O: the callers bring the sizes, fits and measurements.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

# Host memory a CPU-only level may take: the rest is for the KV cache, the app and the system.
HOST_FRACTION = 0.8


class Fit(enum.Enum):
    FULL = "full"  # every layer on the GPU
    PARTIAL = "partial"  # some layers on the GPU, the rest on the CPU
    NONE = "none"  # on the CPU only (no usable GPU, or not even one layer fits)

    @classmethod
    def from_label(cls, label: str) -> Fit:
        """The planner's badge ("fits on GPU", "partial: 31/49 layers", "CPU only") as a Fit."""
        if label == "fits on GPU":
            return cls.FULL
        if label.startswith("partial"):
            return cls.PARTIAL
        return cls.NONE


@dataclass(frozen=True)
class LevelFacts:
    name: str  # "Q4_K_M"
    size_bytes: int | None  # measured, or estimated from bits per weight
    fit: Fit
    kld: float | None = None  # mean KL divergence against BF16; None: not measured
    top1: float | None = None  # share of tokens whose top choice agrees with BF16 (0-1)
    fit_label: str = ""  # the badge the user sees, quoted in the reason


@dataclass(frozen=True)
class Recommendation:
    level: LevelFacts
    reason: str  # one line, for the user


def binary_size(n_bytes: int) -> str:
    """Binary units, as the GPU's memory is shown in the app."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _quality_key(level: LevelFacts, by_kld: bool) -> tuple[float, str]:
    if by_kld:
        assert level.kld is not None
        return (level.kld, level.name)
    return (-(level.size_bytes or 0), level.name)


def _measured(level: LevelFacts) -> str:
    parts = []
    if level.top1 is not None:
        parts.append(f"{100 * level.top1:.1f} % same top token as BF16")
    if level.kld is not None:
        parts.append(f"KLD {level.kld:.4f}")
    return ", ".join(parts)


# How each tier reads in the reason: (of the levels that ..., the largest level that ...).
_FULL = ("fit fully on the GPU", "fits fully on the GPU")
_PARTIAL = ("run partly on the GPU (none fits fully)", "runs partly on the GPU (none fits fully)")
_HOST = ("fit in memory on the CPU", "fits in memory on the CPU")
_CPU = ("run on the CPU", "runs on the CPU")


def best_level(
    levels: Sequence[LevelFacts], host_bytes: int | None = None
) -> Recommendation | None:
    """The level to run, and why in one line; None when there is nothing to choose from."""
    candidates = [level for level in levels if level.fit is Fit.FULL]
    tier = _FULL
    if not candidates:
        candidates = [level for level in levels if level.fit is Fit.PARTIAL]
        tier = _PARTIAL
    if not candidates:
        budget = host_bytes * HOST_FRACTION if host_bytes else None
        candidates = [
            level
            for level in levels
            if budget is None or (level.size_bytes is not None and level.size_bytes <= budget)
        ]
        tier = _HOST if budget else _CPU
    if not candidates:
        # Nothing fits the memory: the smallest at least has a chance.
        smallest = min(levels, key=lambda level: level.size_bytes or 0, default=None)
        if smallest is None:
            return None
        return Recommendation(
            smallest, f"{smallest.name}: the smallest level; none fits comfortably in memory."
        )
    by_kld = all(level.kld is not None for level in candidates)
    chosen = min(candidates, key=lambda level: _quality_key(level, by_kld))
    size = f" ({binary_size(chosen.size_bytes)})" if chosen.size_bytes else ""
    placement = f"; {chosen.fit_label}" if chosen.fit is Fit.PARTIAL and chosen.fit_label else ""
    measured = _measured(chosen)
    if by_kld:
        reason = (
            f"{chosen.name}{size}: the least quality lost of the levels that {tier[0]} "
            f"({measured}{placement})."
        )
    else:
        note = f"measured: {measured}" if measured else "quality not measured yet"
        reason = (
            f"{chosen.name}{size}: the largest, so least lossy, level that {tier[1]} "
            f"({note}{placement})."
        )
    return Recommendation(chosen, reason)
