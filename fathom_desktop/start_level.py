"""The model the app starts on when the settings name none: a converted model's best level.

When the models folder holds a model of the user's own (not the demo) with at least one level
made, the app starts on the level `level_choice.best_level` picks for this GPU, at the
context length and KV cache type the settings hold. Reads the folder, the manifest and the
levels' headers: call it off the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fathom_desktop.engine import planner
from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.level_choice import Fit, LevelFacts, Recommendation, best_level
from fathom_desktop.model_ladder import ModelGroup, read_ladder

# A group named after the model this app is for wins over other converted models.
PREFERRED_NAME = "fathom-r1-14b"


def converted_groups(models_dir: Path) -> list[ModelGroup]:
    """The user's own models in the folder that have a level to run, the preferred first."""
    groups = [
        g
        for g in read_ladder(models_dir).groups
        if g.in_models_folder and not g.is_demo and any(r.made for r in g.rows)
    ]
    return sorted(groups, key=lambda g: (PREFERRED_NAME not in g.basename.lower(), g.basename))


@dataclass(frozen=True)
class StartChoice:
    path: Path
    recommendation: Recommendation

    @property
    def quant(self) -> str:
        return self.recommendation.level.name

    @property
    def reason(self) -> str:
        return self.recommendation.reason


def level_options(
    group: ModelGroup,
    gpu: GpuInfo | None,
    *,
    n_ctx: int,
    kv_cache_type: str,
    flash_attn: bool,
) -> dict[Path, LevelFacts]:
    """Every made level of the group as the rule sees it, by file; the reference only when
    nothing else is made (it is the measuring stick, twice the size of Q8_0 for the same
    quality)."""
    rows = [r for r in group.rows if r.made and r.ladder is not None]
    if not rows:
        rows = [r for r in group.rows if r.made and r.is_reference]
    free = gpu.free_bytes if gpu is not None and gpu.problem is None else None
    options: dict[Path, LevelFacts] = {}
    for row in rows:
        try:
            facts = check_model_file(row.path)
        except ModelFileError:
            continue  # an unusable file is no candidate
        profile = planner.profile_from_model_file(
            facts,
            n_ctx=n_ctx,
            kv_cache_type=kv_cache_type,  # type: ignore[arg-type]
            flash_attn=flash_attn,
        )
        plan = profile.plan(free)
        options[row.path] = LevelFacts(
            name=row.quant,
            size_bytes=row.path.stat().st_size,
            fit=Fit.from_label(plan.label),
            kld=row.quality.kld_mean if row.quality else (0.0 if row.is_reference else None),
            top1=row.quality.top1 if row.quality else None,
            fit_label=plan.label,
        )
    return options


def choose_start_level(
    models_dir: Path,
    gpu: GpuInfo | None,
    *,
    n_ctx: int,
    kv_cache_type: str,
    flash_attn: bool,
    host_bytes: int | None = None,
) -> tuple[ModelGroup, StartChoice] | None:
    """The converted model and level to start on, or None (then the demo starts).
    `host_bytes`: the memory a CPU-only level may use (None: not weighed)."""
    for group in converted_groups(models_dir):
        options = level_options(
            group, gpu, n_ctx=n_ctx, kv_cache_type=kv_cache_type, flash_attn=flash_attn
        )
        chosen = best_level(list(options.values()), host_bytes)
        if chosen is not None:
            path = next(p for p, facts in options.items() if facts is chosen.level)
            return group, StartChoice(path, chosen)
    return None
