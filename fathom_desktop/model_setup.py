"""Getting Fathom-R1-14B, from the Hub to a loaded, measured quantization level.

The steps, in order: download the checkpoint, convert it to a BF16 GGUF, make the importance
matrix (only when the chosen level is made with one), quantize the level recommended for this
GPU (`level_choice.best_level`), measure its quality against the BF16, and hand it to the window
to load. Each step runs in a child process (setup_steps.run_step): the window process never
loads llama.cpp, the window stays responsive, and Cancel (or the window going away) stops the
child, whose steps write only through `atomic_output` (no file that looks finished is left).

What is done is kept in a small JSON file in the models folder, written atomically after each
step, so the flow continues after a restart from the first step not done. A step only counts as
done when its output is still there; the manifest that `fathom-convert` writes also counts, so a
folder made on the command line is picked up too.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from convert.atomic import atomic_output, require_free_space
from convert.errors import ConversionError
from convert.quantize import LADDER, ImatrixUse, output_name, quant_type
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.level_choice import Fit, LevelFacts, Recommendation, best_level
from fathom_desktop.model_ladder import MEASURE_CHUNKS

log = logging.getLogger(__name__)

FATHOM_REPO = "FractalAIResearch/Fathom-R1-14B"
STATE_VERSION = 1
UNQUANTIZED = "BF16"
# The same setup as Settings' Make and Measure (model_ladder, level_jobs), so that the level's
# measurement is the one Settings shows and its importance matrix the one Make would use.
IMATRIX_CHUNKS = 100


class Step(enum.Enum):
    DOWNLOAD = "download"
    CONVERT = "convert"
    IMATRIX = "imatrix"
    QUANTIZE = "quantize"
    MEASURE = "measure"


STEPS: tuple[Step, ...] = tuple(Step)


class StepCancelled(Exception):
    """The user cancelled the step; nothing unfinished was kept."""


# -- where everything goes ----------------------------------------------------------------------


@dataclass(frozen=True)
class SetupPlan:
    """The flow's fixed inputs: what to fetch, where each output goes, how to run the models."""

    repo_id: str
    checkpoint_dir: Path
    models_dir: Path
    # Levels the recommendation chooses from (default: the whole ladder).
    candidates: tuple[str, ...] = tuple(q.name for q in LADDER)
    # Calibration and measurement chunks of 512 tokens (None: the whole shipped text).
    imatrix_chunks: int | None = IMATRIX_CHUNKS
    measure_chunks: int | None = MEASURE_CHUNKS
    # Layers on the GPU for the imatrix and the measurement (None: llama.cpp's default, all).
    gpu_layers: int | None = None

    @property
    def basename(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]

    @property
    def bf16(self) -> Path:
        return self.models_dir / output_name(self.basename, UNQUANTIZED)

    @property
    def imatrix(self) -> Path:
        return self.models_dir / f"{self.basename}-imatrix.gguf"

    @property
    def state_file(self) -> Path:
        # Hidden, like the pipeline's other unfinished things: the model list skips it.
        return self.models_dir / f".get-{self.basename}.json"

    def level_file(self, level: str) -> Path:
        return self.models_dir / output_name(self.basename, level)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoint_dir"] = str(self.checkpoint_dir)
        data["models_dir"] = str(self.models_dir)
        data["candidates"] = list(self.candidates)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SetupPlan:
        return cls(
            repo_id=data["repo_id"],
            checkpoint_dir=Path(data["checkpoint_dir"]),
            models_dir=Path(data["models_dir"]),
            candidates=tuple(data["candidates"]),
            imatrix_chunks=data["imatrix_chunks"],
            measure_chunks=data["measure_chunks"],
            gpu_layers=data["gpu_layers"],
        )


def default_plan(repo_id: str = FATHOM_REPO) -> SetupPlan:
    from fathom_desktop import paths

    return SetupPlan(
        repo_id=repo_id,
        checkpoint_dir=paths.data_dir() / "checkpoints" / repo_id.replace("/", "--"),
        models_dir=paths.models_dir(),
    )


# -- what is done -------------------------------------------------------------------------------


@dataclass
class SetupState:
    done: list[str] = field(default_factory=list)  # Step values, in the order they finished
    level: str | None = None  # the level chosen to make (after the conversion)
    reason: str = ""  # why, in one line
    measured: dict[str, Any] | None = None  # the measured stats of the level

    def is_done(self, step: Step) -> bool:
        return step.value in self.done

    def mark_done(self, step: Step) -> None:
        if step.value not in self.done:
            self.done.append(step.value)


def read_state(plan: SetupPlan) -> SetupState:
    """The saved state; a missing or unreadable file means nothing was recorded."""
    try:
        data = json.loads(plan.state_file.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION or data.get("repo_id") != plan.repo_id:
            return SetupState()
        return SetupState(
            done=[str(s) for s in data.get("done", []) if s in {x.value for x in STEPS}],
            level=data.get("level"),
            reason=str(data.get("reason", "")),
            measured=data.get("measured"),
        )
    except FileNotFoundError:
        return SetupState()
    except (OSError, ValueError, AttributeError, TypeError) as error:
        log.warning("ignoring %s: %s", plan.state_file, error)
        return SetupState()


def write_state(plan: SetupPlan, state: SetupState) -> None:
    data = {"version": STATE_VERSION, "repo_id": plan.repo_id, **asdict(state)}
    with atomic_output(plan.state_file) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _in_manifest(path: Path) -> bool:
    """Whether `fathom-convert` recorded this very file (same size) as finished."""
    from convert.manifest import read_manifest

    try:
        entry = read_manifest(path.parent).files.get(path.name)
        return entry is not None and path.is_file() and entry.size_bytes == path.stat().st_size
    except (ConversionError, OSError):
        return False


def needs_imatrix(level: str | None) -> bool:
    return level is not None and quant_type(level).imatrix is not ImatrixUse.NONE


def step_done(plan: SetupPlan, state: SetupState, step: Step) -> bool:
    """Done when recorded and its output is still there (or fathom-convert recorded it)."""
    from convert.download import read_source

    if step is Step.DOWNLOAD:
        downloaded = state.is_done(step) and read_source(plan.checkpoint_dir) is not None
        # Only the conversion reads the checkpoint: once converted, it may have been deleted.
        return downloaded or step_done(plan, state, Step.CONVERT)
    if step is Step.CONVERT:
        return (state.is_done(step) and plan.bf16.is_file()) or _in_manifest(plan.bf16)
    if step is Step.IMATRIX:
        if state.level is not None and not needs_imatrix(state.level):
            return True  # not needed for this level
        return state.is_done(step) and plan.imatrix.is_file()
    level_file = plan.level_file(state.level) if state.level else None
    if level_file is None:
        return False
    if step is Step.QUANTIZE:
        return (state.is_done(step) and level_file.is_file()) or _in_manifest(level_file)
    return state.is_done(step) and state.measured is not None and level_file.is_file()


def next_step(plan: SetupPlan, state: SetupState) -> Step | None:
    """The first step not done; None when the level is made and measured."""
    for step in STEPS:
        if not step_done(plan, state, step):
            return step
    return None


def skipped(plan: SetupPlan, state: SetupState, step: Step) -> bool:
    """A step the chosen level does not need (the imatrix for Q5_K_M and above)."""
    return step is Step.IMATRIX and state.level is not None and not needs_imatrix(state.level)


# -- which level ----------------------------------------------------------------------------------


def ladder_facts(
    config_json: Path, gpu: GpuInfo | None, candidates: tuple[str, ...], n_ctx: int
) -> list[LevelFacts]:
    """Each candidate level's estimated size and fit on this GPU, from the checkpoint's config."""
    from fathom_desktop.engine import planner

    config = json.loads(config_json.read_text(encoding="utf-8"))
    facts = []
    for name in candidates:
        try:
            profile = planner.model_memory_profile(config, name, n_ctx=n_ctx)
        except KeyError:
            # The planner knows llama.cpp's per-tensor mix of the common types only; for the
            # others (IQ3_XXS, IQ2_M) the ladder's bits per weight, applied flat, is close.
            bits = quant_type(name).bits_per_weight
            if bits is None:
                raise
            profile = planner.model_memory_profile(config, bits, n_ctx=n_ctx)
        if gpu is None or gpu.problem is not None:
            label = "CPU only"
        else:
            label = profile.plan(gpu.free_bytes).label
        facts.append(
            LevelFacts(name, profile.weights_bytes, Fit.from_label(label), None, None, label)
        )
    return facts


def choose_level(
    plan: SetupPlan,
    gpu: GpuInfo | None,
    n_ctx: int,
    measured: dict[str, dict[str, Any]] | None = None,
) -> Recommendation:
    """The level to make for this GPU (`measured`: stats by level, quoted in the reason);
    refuses in one line when the checkpoint's config cannot be read."""
    from fathom_desktop.engine.planner import available_host_bytes

    config_json = plan.checkpoint_dir / "config.json"
    try:
        facts = ladder_facts(config_json, gpu, plan.candidates, n_ctx)
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(f"Cannot read {config_json} to choose a level: {error}") from error
    for level, stats in (measured or {}).items():
        facts = [
            replace(f, kld=stats.get("kld_mean"), top1=stats.get("top1")) if f.name == level else f
            for f in facts
        ]
    chosen = best_level(facts, available_host_bytes())
    if chosen is None:
        raise ConversionError("No quantization level to choose from.")
    return chosen


def gpu_layers_for_reference(config_json: Path, gpu: GpuInfo | None) -> int:
    """Layers of the BF16 that fit the GPU: used for it and for the level alike (same settings)."""
    from fathom_desktop.engine import planner

    if gpu is None or gpu.problem is not None:
        return 0
    profile = planner.model_memory_profile(config_json, UNQUANTIZED, n_ctx=512)
    return profile.plan(gpu.free_bytes).n_gpu_layers


# -- disk space -----------------------------------------------------------------------------------


def check_space(plan: SetupPlan, step: Step, level: str | None) -> None:
    """Refuse a step in one line before it starts when the folder has no room for its output.

    The download's size is known only once the Hub answers; its child checks it then."""
    if step is Step.CONVERT:
        weights = sum(p.stat().st_size for p in plan.checkpoint_dir.glob("*.safetensors"))
        require_free_space(plan.models_dir, weights, plan.bf16.name)
    elif step is Step.QUANTIZE and level is not None and plan.bf16.is_file():
        bits = quant_type(level).bits_per_weight or 16.0
        # BF16 holds 16 bits per weight; the level about bits_per_weight.
        need = int(plan.bf16.stat().st_size * bits / 16)
        require_free_space(plan.models_dir, need, plan.level_file(level).name)
    elif step is Step.IMATRIX:
        require_free_space(plan.models_dir, 0, plan.imatrix.name)


def measured_levels(models_dir: Path, basename: str) -> dict[str, tuple[float, float]]:
    """{level: (mean KLD, top-token agreement)} recorded in the folder's manifest for this
    model's levels (the latest measurement of each); empty when none or unreadable."""
    from convert.manifest import read_manifest

    try:
        evaluations = read_manifest(models_dir).evaluations
    except (ConversionError, OSError):
        return {}
    names = {output_name(basename, q.name): q.name for q in LADDER}
    found: dict[str, tuple[float, float]] = {}
    for entry in sorted(evaluations, key=lambda e: e.created):
        level = names.get(entry.file)
        if level is not None and "kld_mean" in entry.stats and "top1" in entry.stats:
            found[level] = (float(entry.stats["kld_mean"]), float(entry.stats["top1"]))
    return found
