"""Which quantization level to run: the best one that fits.

The rule: among the levels that fit fully on the GPU, the one that loses the least quality;
when none fits fully, the least lossy of those that keep at least half of their layers on the
GPU (a level mostly on the CPU runs at CPU speed, a poor trade for a reasoning model's thousands
of tokens), or failing that the one with the most layers on it; with no usable GPU, the least
lossy that fits in memory. Quality lost is the measured KL
divergence against the BF16 reference (`fathom-convert evaluate`) when every candidate has been
measured; otherwise the file size stands in for it (within one model's ladder, a larger level
keeps more of the model), and the reason says the quality was not measured yet.

No widgets and no I/O: the callers bring the sizes, fits and measurements.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Host memory a CPU-only level may take: the rest is for the KV cache, the app and the system.
HOST_FRACTION = 0.8
# A partial offload worth recommending keeps at least this share of the layers on the GPU.
PARTIAL_MIN_SHARE = 0.5
_LAYERS = re.compile(r"(\d+)/(\d+) layers")


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


def measured_text(level: LevelFacts) -> str:
    """What was measured, e.g. "98.4 % same top token as BF16, KLD 0.0078"; "" if nothing."""
    parts = []
    if level.top1 is not None:
        parts.append(f"{100 * level.top1:.1f} % same top token as BF16")
    if level.kld is not None:
        parts.append(f"KLD {level.kld:.4f}")
    return ", ".join(parts)


def gpu_share(level: LevelFacts) -> float:
    """The share of the layers on the GPU, from the badge ("partial: 31/49 layers")."""
    if level.fit is Fit.FULL:
        return 1.0
    match = _LAYERS.search(level.fit_label)
    return int(match.group(1)) / int(match.group(2)) if match and int(match.group(2)) else 0.0


def _pick(candidates: list[LevelFacts]) -> tuple[LevelFacts, bool]:
    """The least lossy candidate, and whether measurements (not sizes) decided."""
    by_kld = all(level.kld is not None for level in candidates)
    return min(candidates, key=lambda level: _quality_key(level, by_kld)), by_kld


def _why(chosen: LevelFacts, by_kld: bool, of_levels: str, largest: str) -> str:
    size = f" ({binary_size(chosen.size_bytes)})" if chosen.size_bytes else ""
    placement = f"; {chosen.fit_label}" if chosen.fit is Fit.PARTIAL and chosen.fit_label else ""
    measured = measured_text(chosen)
    if by_kld:
        return f"{chosen.name}{size}: {of_levels} ({measured}{placement})."
    note = f"measured: {measured}" if measured else "quality not measured yet"
    return f"{chosen.name}{size}: {largest} ({note}{placement})."


def best_level(
    levels: Sequence[LevelFacts], host_bytes: int | None = None
) -> Recommendation | None:
    """The level to run, and why in one line; None when there is nothing to choose from."""
    full = [level for level in levels if level.fit is Fit.FULL]
    if full:
        chosen, by_kld = _pick(full)
        why = _why(
            chosen,
            by_kld,
            "the least quality lost of the levels that fit fully on the GPU",
            "the largest, so least lossy, level that fits fully on the GPU",
        )
        return Recommendation(chosen, why)
    partial = [level for level in levels if level.fit is Fit.PARTIAL]
    if partial:
        mostly_gpu = [level for level in partial if gpu_share(level) >= PARTIAL_MIN_SHARE]
        if not mostly_gpu:
            chosen = max(partial, key=lambda level: (gpu_share(level), level.size_bytes or 0))
            size = f" ({binary_size(chosen.size_bytes)})" if chosen.size_bytes else ""
            why = (
                f"{chosen.name}{size}: none fits on the GPU even half-way; this one puts the "
                f"most layers on it ({chosen.fit_label or 'partial'})."
            )
            return Recommendation(chosen, why)
        chosen, by_kld = _pick(mostly_gpu)
        why = _why(
            chosen,
            by_kld,
            "none fits fully on the GPU; the least quality lost of those with at least half "
            "their layers on it",
            "none fits fully on the GPU; the largest, so least lossy, level with at least half "
            "its layers on it",
        )
        return Recommendation(chosen, why)
    budget = host_bytes * HOST_FRACTION if host_bytes else None
    fitting = [
        level
        for level in levels
        if budget is None or (level.size_bytes is not None and level.size_bytes <= budget)
    ]
    if not fitting:
        # Nothing fits the memory: the smallest at least has a chance.
        smallest = min(levels, key=lambda level: level.size_bytes or 0, default=None)
        if smallest is None:
            return None
        return Recommendation(
            smallest, f"{smallest.name}: the smallest level; none fits comfortably in memory."
        )
    plural, singular = (
        ("fit in memory on the CPU", "fits in memory on the CPU")
        if budget
        else ("run on the CPU", "runs on the CPU")
    )
    chosen, by_kld = _pick(fitting)
    why = _why(
        chosen,
        by_kld,
        f"the least quality lost of the levels that {plural}",
        f"the largest, so least lossy, level that {singular}",
    )
    return Recommendation(chosen, why)
