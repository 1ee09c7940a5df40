"""fathom-tiny, the embedded demo model: shipped in resources/, made into GGUFs on first use.

The app ships the demo as a Hugging Face checkpoint (resources/fathom-tiny, ~4 MB) rather than as
a GGUF. On first use it goes through the same converter and quantizer a user's Fathom-R1-14B
download does (checkpoint -> BF16 GGUF -> Q8_0), so every install exercises the real pipeline on a
real Qwen2 model, and the GGUF is always written by the gguf/llama.cpp versions installed beside
the app, never by older ones frozen into the repository. That takes about a second.

The BF16 stays in the models folder beside the Q8_0: it is the demo's reference, from which the
rest of its ladder is made and against which every level is measured (`demo_ladder_work`: the
importance matrix, then Q6_K, Q4_K_M, Q3_K_M and Q2_K, then the KLD of each, a few seconds in a
child process), so a fresh install's settings dialog shows real measurements.

The GGUFs go to the user's models folder under names that carry a fingerprint of the shipped
checkpoint, so an app update with a retrained demo makes fresh files instead of reusing stale
ones. Every step writes atomically: an interrupted first run leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from convert.atomic import partial_path
from convert.errors import ConversionError
from convert.progress import NullProgress, Progress
from fathom_desktop.paths import models_dir, resources_dir

DEMO_NAME = "fathom-tiny"
DEMO_QUANT = "Q8_0"
DEMO_REFERENCE = "BF16"
# The demo's own ladder, made and measured in the background on first start.
DEMO_LEVELS = ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K")
# The demo's importance matrix: enough calibration chunks to matter, few enough for seconds.
DEMO_IMATRIX_CHUNKS = 32
# The files that define the model; a change to any of them means a new GGUF.
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

# The self-test's question (`fathom-desktop --self-test`), answered greedily by the demo model.
SELF_TEST_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether?"
)
SELF_TEST_ANSWER = "72"


def demo_checkpoint() -> Path:
    """The shipped checkpoint folder; raises ConversionError when this copy of the app lacks it."""
    return require_complete(resources_dir() / DEMO_NAME)


def require_complete(folder: Path) -> Path:
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise ConversionError(
            f"The demo model is incomplete in {folder} (missing {', '.join(missing)}); "
            f"reinstall Fathom Desktop or pass --model with a GGUF file."
        )
    return folder


def checkpoint_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def demo_basename(checkpoint: Path | None = None) -> str:
    """The demo's model name in the models folder: `fathom-tiny-<fingerprint>`."""
    checkpoint = require_complete(checkpoint) if checkpoint else demo_checkpoint()
    return f"{DEMO_NAME}-{checkpoint_fingerprint(checkpoint)}"


def demo_model_path(
    checkpoint: Path | None = None, directory: Path | None = None, quant: str = DEMO_QUANT
) -> Path:
    """Where the demo's GGUF of one level lives (or will live) for the shipped checkpoint."""
    directory = directory or models_dir()
    return directory / f"{demo_basename(checkpoint)}-{quant}.gguf"


def ensure_demo_model(
    progress: Progress | None = None,
    *,
    checkpoint: Path | None = None,
    directory: Path | None = None,
) -> Path:
    """The demo's Q8_0 GGUF (and its BF16 reference), converting and quantizing them first if
    this is their first use.

    Raises ConversionError (one readable line) when the checkpoint is missing or broken, or the
    disk is full; nothing half-written is left behind then.
    """
    from convert.gguf_convert import convert_checkpoint
    from convert.manifest import describe_file, update_manifest
    from convert.quantize import quantize

    checkpoint = require_complete(checkpoint) if checkpoint else demo_checkpoint()
    directory = directory or models_dir()
    target = demo_model_path(checkpoint, directory)
    reference = demo_model_path(checkpoint, directory, DEMO_REFERENCE)
    if target.is_file() and reference.is_file():
        return target
    progress = progress or NullProgress()
    directory.mkdir(parents=True, exist_ok=True)
    if not _remove_abandoned_scratch(directory):
        # No other run is making the demo: a partial output can only be a killed run's.
        partial_path(target).unlink(missing_ok=True)
    # A private scratch folder: two processes making the demo at once must not share their
    # intermediates; the final renames are atomic, so whichever finishes second simply replaces
    # the other's. Its name carries our PID, so a later start can tell a killed run's folder
    # from a live one.
    with tempfile.TemporaryDirectory(prefix=_scratch_prefix(os.getpid()), dir=directory) as scratch:
        bf16 = Path(scratch) / reference.name
        q8 = Path(scratch) / target.name
        progress.message("preparing the demo model")
        convert_checkpoint(checkpoint, bf16, "bf16", progress=progress, source_repo=None)
        quantize(bf16, q8, DEMO_QUANT, n_threads=1, progress=progress)
        # Hashed under their final names (the scratch copies are named alike), listed once moved.
        entries = [
            describe_file(bf16, DEMO_REFERENCE, source_repo=None, source_revision=None),
            describe_file(q8, DEMO_QUANT, source_repo=None, source_revision=None),
        ]
        os.replace(bf16, reference)
        os.replace(q8, target)
    update_manifest(directory, entries)
    _remove_stale(directory, keep=demo_basename(checkpoint))
    return target


def _scratch_prefix(pid: int) -> str:
    return f".{DEMO_NAME}-{pid}-"


def _remove_abandoned_scratch(directory: Path) -> int:
    """Remove the scratch folders of runs killed before they could clean up after themselves;
    returns how many runs are still making the demo."""
    live = 0
    for folder in directory.glob(f".{DEMO_NAME}-*"):
        if not folder.is_dir():
            continue
        pid_text = folder.name.removeprefix(f".{DEMO_NAME}-").split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            live += 1
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return live


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours to judge
    return True


def _remove_stale(directory: Path, keep: str) -> None:
    """GGUFs made from earlier versions of the demo (any level, its imatrix) are never used
    again; `keep` is the current demo's base name."""
    for old in directory.glob(f"{DEMO_NAME}-*.gguf"):
        if not old.name.startswith(f"{keep}-"):
            old.unlink(missing_ok=True)


def demo_ladder_work(directory: Path | None = None, checkpoint: Path | None = None):
    """What is left to make and measure of the demo's own ladder (a `LevelWork` for the
    level_jobs child), or None when every level is made and measured."""
    from fathom_desktop.level_jobs import LevelWork
    from fathom_desktop.model_ladder import imatrix_path, read_ladder

    directory = directory or models_dir()
    basename = demo_basename(checkpoint)
    reference = demo_model_path(checkpoint, directory, DEMO_REFERENCE)
    if not reference.is_file():
        return None
    group = next(
        (g for g in read_ladder(directory).groups if g.basename == basename and g.in_models_folder),
        None,
    )
    if group is None:
        return None
    rows = [group.row(quant) for quant in DEMO_LEVELS]
    make = tuple(r.quant for r in rows if r is not None and not r.made)
    unmeasured = [r for r in rows if r is not None and (not r.made or r.quality is None)]
    if not make and not unmeasured:
        return None
    return LevelWork(
        source=str(reference),
        out_dir=str(directory),
        basename=basename,
        make=make,
        measure=tuple(str(r.path) for r in rows if r is not None),
        imatrix=str(imatrix_path(directory, basename)),
        make_imatrix=True,
        chunks=group.measure_chunks,
        imatrix_chunks=DEMO_IMATRIX_CHUNKS,
        # The demo is measured on the CPU: a few MB need no GPU, and the numbers stay the same
        # on every machine.
        n_gpu_layers=0,
        n_threads=1,
    )
