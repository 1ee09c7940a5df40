"""The model the app starts on when the settings name none: a converted model's best level.

When the models folder holds a model of the user's own (not the demo) with at least one level
made, the app starts on the level `ladder_choice.best_level` picks for this GPU, at the
context length and KV cache type the settings hold. Reads the folder, the manifest and the
levels' headers: call it off the GUI thread.
"""

from __future__ import annotations

from pathlib import Path

from fathom_desktop.engine import planner
from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.ladder_choice import LevelChoice, LevelOption, best_level
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


def level_options(
    group: ModelGroup,
    gpu: GpuInfo | None,
    *,
    n_ctx: int,
    kv_cache_type: str,
    flash_attn: bool,
) -> list[LevelOption]:
    """Every made level of the group as the rule sees it; the reference only when nothing
    else is made (it is the measuring stick, twice the size of Q8_0 for the same quality)."""
    rows = [r for r in group.rows if r.made and r.ladder is not None]
    if not rows:
        rows = [r for r in group.rows if r.made and r.is_reference]
    free = gpu.free_bytes if gpu is not None and gpu.problem is None else None
    options = []
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
        options.append(
            LevelOption(
                path=row.path,
                quant=row.quant,
                ladder_rank=row.rank,
                kld=row.quality.kld_mean if row.quality else (0.0 if row.is_reference else None),
                n_gpu_layers=plan.n_gpu_layers,
                n_layers=plan.n_layers,
            )
        )
    return options


def choose_start_level(
    models_dir: Path,
    gpu: GpuInfo | None,
    *,
    n_ctx: int,
    kv_cache_type: str,
    flash_attn: bool,
) -> tuple[ModelGroup, LevelChoice] | None:
    """The converted model and level to start on, or None (then the demo starts)."""
    for group in converted_groups(models_dir):
        options = level_options(
            group, gpu, n_ctx=n_ctx, kv_cache_type=kv_cache_type, flash_attn=flash_attn
        )
        usable = gpu is not None and gpu.problem is None
        choice = best_level(options, gpu_usable=usable)
        if choice is not None:
            return group, choice
    return None
