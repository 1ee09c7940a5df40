"""fathom-tiny, the embedded demo model: shipped in resources/, made into a GGUF on first use.

The app ships the demo as a Hugging Face checkpoint (resources/fathom-tiny, ~4 MB) rather than as
a GGUF. On first use it goes through the same converter and quantizer a user's Fathom-R1-14B
download does (checkpoint -> BF16 GGUF -> Q8_0), so every install exercises the real pipeline on a
real Qwen2 model, and the GGUF is always written by the gguf/llama.cpp versions installed beside
the app, never by older ones frozen into the repository. That takes about a second.

The GGUF goes to the user's models folder under a name that carries a fingerprint of the shipped
checkpoint, so an app update with a retrained demo makes a fresh file instead of reusing a stale
one. Both steps write atomically: an interrupted first run leaves nothing that looks finished.
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


def demo_model_path(checkpoint: Path | None = None, directory: Path | None = None) -> Path:
    """Where the demo's GGUF lives (or will live) for the shipped checkpoint."""
    checkpoint = require_complete(checkpoint) if checkpoint else demo_checkpoint()
    directory = directory or models_dir()
    return directory / f"{DEMO_NAME}-{checkpoint_fingerprint(checkpoint)}-{DEMO_QUANT}.gguf"


def ensure_demo_model(
    progress: Progress | None = None,
    *,
    checkpoint: Path | None = None,
    directory: Path | None = None,
) -> Path:
    """The demo's Q8_0 GGUF, converting and quantizing it first if this is its first use.

    Raises ConversionError (one readable line) when the checkpoint is missing or broken, or the
    disk is full; nothing half-written is left behind then.
    """
    from convert.gguf_convert import convert_checkpoint
    from convert.quantize import quantize

    checkpoint = require_complete(checkpoint) if checkpoint else demo_checkpoint()
    directory = directory or models_dir()
    target = demo_model_path(checkpoint, directory)
    if target.is_file():
        return target
    progress = progress or NullProgress()
    directory.mkdir(parents=True, exist_ok=True)
    if not _remove_abandoned_scratch(directory):
        # No other run is making the demo: a partial output can only be a killed run's.
        partial_path(target).unlink(missing_ok=True)
    # A private scratch folder: two processes making the demo at once must not share the BF16
    # intermediate; the final rename is atomic, so whichever finishes second simply replaces it.
    # Its name carries our PID, so a later start can tell a killed run's folder from a live one.
    with tempfile.TemporaryDirectory(prefix=_scratch_prefix(os.getpid()), dir=directory) as scratch:
        bf16 = Path(scratch) / f"{DEMO_NAME}-BF16.gguf"
        progress.message("preparing the demo model")
        convert_checkpoint(checkpoint, bf16, "bf16", progress=progress, source_repo=None)
        quantize(bf16, target, DEMO_QUANT, n_threads=1, progress=progress)
    _remove_stale(directory, keep=target)
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


def _remove_stale(directory: Path, keep: Path) -> None:
    """GGUFs made from earlier versions of the demo are never used again."""
    for old in directory.glob(f"{DEMO_NAME}-*-{DEMO_QUANT}.gguf"):
        if old != keep:
            old.unlink(missing_ok=True)
