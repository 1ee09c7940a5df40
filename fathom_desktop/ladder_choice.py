"""Which quantization level of a model to run: the best level that fits this GPU.

One rule, used wherever the app picks a level for the user (the start without a chosen model,
the first-run recommendation):

1. Among the levels that fit fully on the GPU, the one that loses least: the lowest measured
   KL-divergence from the model's BF16/F16 reference. Until every fitting level is measured,
   the ladder's own order stands in for the measurements (Q8_0 before Q6_K before ...).
2. When none fits fully, the one that puts the most layers on the GPU (the closest to fitting),
   ties broken the same way. With no usable GPU every level runs on the CPU, and rule 1's
   ordering picks among them.

No Qt and no I/O here: the caller brings each level's plan (from the VRAM planner) and its
measurement (from manifest.json).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LevelOption:
    """One made level of a model, as the choice sees it."""

    path: Path
    quant: str  # "Q4_K_M"
    ladder_rank: int  # its place in the ladder, 0 = the largest (Q8_0)
    kld: float | None  # mean KLD from the reference; None when not measured
    n_gpu_layers: int  # what the planner would offload at the current settings
    n_layers: int  # offloadable layers (blocks + output)

    @property
    def fits_fully(self) -> bool:
        return self.n_gpu_layers >= self.n_layers > 0


@dataclass(frozen=True)
class LevelChoice:
    option: LevelOption
    reason: str  # one line a user can read: why this level

    @property
    def path(self) -> Path:
        return self.option.path


def _by_quality(options: Sequence[LevelOption]) -> tuple[LevelOption, bool]:
    """The level that loses least, and whether measurements (not the ladder) decided it."""
    if all(o.kld is not None and math.isfinite(o.kld) for o in options):
        return min(options, key=lambda o: (o.kld, o.ladder_rank)), True
    return min(options, key=lambda o: o.ladder_rank), False


def _quality_words(option: LevelOption, measured: bool, among: str) -> str:
    if measured:
        return f"the lowest measured quality loss (KLD {option.kld:.4g}) {among}"
    return f"the highest level in the ladder {among} (not all of them are measured yet)"


def best_level(options: Sequence[LevelOption], *, gpu_usable: bool = True) -> LevelChoice | None:
    """The level to run, with its reason; None when there is no level at all."""
    if not options:
        return None
    if not gpu_usable:
        chosen, measured = _by_quality(options)
        return LevelChoice(
            chosen,
            f"{chosen.quant}: no GPU can be used, so it runs on the CPU; "
            + _quality_words(chosen, measured, "of the levels made"),
        )
    fitting = [o for o in options if o.fits_fully]
    if fitting:
        chosen, measured = _by_quality(fitting)
        return LevelChoice(
            chosen,
            f"{chosen.quant}: "
            + _quality_words(chosen, measured, "of the levels that fit fully on the GPU"),
        )
    most = max(o.n_gpu_layers / max(o.n_layers, 1) for o in options)
    closest = [o for o in options if o.n_gpu_layers / max(o.n_layers, 1) == most]
    chosen, _measured = _by_quality(closest)
    if chosen.n_gpu_layers <= 0:
        where = "no level fits any layer on the GPU; it runs on the CPU"
    else:
        where = (
            f"no level fits fully on the GPU; it puts the most layers there "
            f"({chosen.n_gpu_layers}/{chosen.n_layers})"
        )
    return LevelChoice(chosen, f"{chosen.quant}: {where}")
