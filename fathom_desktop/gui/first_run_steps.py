"""The first-run dialog's long steps: convert, quantize, download, each cancellable.

Plain functions do the work (no widgets, so they are testable alone); `Job` runs one of them on
its own QThread and reports back through signals. Cancel is a threading.Event: the conversion and
hashing check it between chunks (via the progress object), llama.cpp's quantizer gets it directly
and kills its child process, and the download runs in a child process that is killed.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from convert.download import download_checkpoint, looks_like_repo_id, read_source
from convert.errors import ConversionError
from convert.gguf_convert import convert_checkpoint
from convert.manifest import describe_file, update_manifest
from convert.progress import CancellableProgress
from convert.quantize import LADDER, ImatrixUse, basename_of, output_name, quantize
from fathom_desktop.engine import planner
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.engine.types import FATHOM_N_CTX
from fathom_desktop.gui.model_list import CPU_ONLY, human_size

log = logging.getLogger(__name__)

DEFAULT_REPO = "FractalAIResearch/Fathom-R1-14B"
# Conversion keeps the checkpoint's own precision; llama.cpp quantizes from BF16 without loss.
CONVERT_OUTTYPE = "bf16"
UNQUANTIZED_NAME = "BF16"
# Progress signals are throttled; a GUI repaint per 8 MB chunk would be wasted work.
PROGRESS_INTERVAL_S = 0.1
DOWNLOAD_POLL_S = 0.5
# A time-left estimate from the first seconds' rate would swing wildly; wait for a steadier one.
TIME_LEFT_AFTER_S = 5.0


class JobCancelled(Exception):
    """The user pressed Cancel; the step's partial output has been removed."""


# -- progress that can be cancelled -------------------------------------------------------------


class JobProgress(CancellableProgress):
    """The pipeline's Progress protocol, forwarding to a callback and honouring Cancel."""

    def __init__(self, report: Callable[[str, int, int, str], None], cancel: threading.Event):
        super().__init__(
            report,
            cancel,
            lambda: JobCancelled("Cancelled; nothing unfinished was kept."),
            PROGRESS_INTERVAL_S,
        )


# -- the pipeline steps (plain functions: no widgets) -------------------------------------------


def model_basename(checkpoint: Path) -> str:
    source = read_source(checkpoint)
    return source.repo_id.split("/")[-1] if source else checkpoint.resolve().name


def convert_folder(
    checkpoint: Path, models_dir: Path, progress: JobProgress, cancel: threading.Event
) -> Path:
    """Checkpoint folder -> `<name>-BF16.gguf` in the models folder."""
    source = read_source(checkpoint)
    out = models_dir / output_name(model_basename(checkpoint), UNQUANTIZED_NAME)
    convert_checkpoint(
        checkpoint,
        out,
        CONVERT_OUTTYPE,
        progress=progress,
        source_repo=source.repo_id if source else None,
        source_revision=source.revision if source else None,
    )
    return out


def quantize_levels(
    unquantized: Path,
    quants: Sequence[str],
    keep_unquantized: bool,
    source: tuple[str | None, str | None],
    progress: JobProgress,
    cancel: threading.Event,
) -> list[Path]:
    """Quantize to each level and record every kept file in the folder's manifest."""
    folder = unquantized.parent
    outputs = []
    for name in quants:
        out = folder / output_name(basename_of(unquantized), name)
        quantize(unquantized, out, name, progress=progress, cancel=cancel)
        outputs.append((out, name))
    if keep_unquantized:
        outputs.insert(0, (unquantized, UNQUANTIZED_NAME))
    else:
        unquantized.unlink(missing_ok=True)
    entries = [
        describe_file(
            path, quant, source_repo=source[0], source_revision=source[1], progress=progress
        )
        for path, quant in outputs
    ]
    try:
        update_manifest(folder, entries)
    except ConversionError as error:
        # The models are complete and usable; only their record could not be written.
        log.warning("%s", error)
    return [path for path, _ in outputs]


@dataclass(frozen=True)
class QuantOption:
    name: str
    estimated_bytes: int | None
    fit: str
    purpose: str


def quant_options(config_json: Path, gpu: GpuInfo | None) -> list[QuantOption]:
    """The ladder, each with its predicted size and fit at the default context, largest first."""
    options = []
    for quant in LADDER:
        if quant.imatrix is ImatrixUse.REQUIRED:
            continue  # this flow makes no importance matrix, and these levels need one
        try:
            profile = planner.model_memory_profile(config_json, quant.name, n_ctx=FATHOM_N_CTX)
            size: int | None = profile.weights_bytes
            fit = profile.plan(gpu.free_bytes).label if gpu is not None else CPU_ONLY
        except (OSError, ValueError, KeyError):
            size, fit = None, "fit unknown"
        options.append(QuantOption(quant.name, size, fit, quant.purpose))
    return options


def _download_in_child(
    sender: multiprocessing.connection.Connection, repo_id: str, dest: str
) -> None:
    def started(total_bytes: int, present_bytes: int) -> None:
        sender.send(("total", (total_bytes, present_bytes)))

    try:
        result = download_checkpoint(repo_id, Path(dest), show_progress=False, on_start=started)
    except ConversionError as error:
        sender.send(("error", str(error)))
    except Exception as error:  # the parent shows one line, never a traceback
        sender.send(("error", f"Downloading {repo_id} failed: {error}"))
    else:
        sender.send(("done", str(result.path)))
    finally:
        sender.close()


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


@dataclass
class _DownloadMeter:
    """Reads how far a download is from its folder's size, and estimates the time left.

    The folder also holds what the transfer does not add to (huggingface-hub's metadata, partial
    files a killed earlier run left behind), so only its growth since the start counts.
    """

    total: int
    present: int  # bytes of needed files already complete at the start
    baseline: int  # the folder's size at the start
    started: float = field(default_factory=time.monotonic)
    done: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.done = min(self.present, self.total)

    def update(self, folder_bytes: int) -> int:
        # Never backwards: a replaced stale file shrinks the folder for a moment.
        grown = max(0, folder_bytes - self.baseline)
        self.done = max(self.done, min(self.total, self.present + grown))
        return self.done

    def time_left(self) -> str:
        """A rough estimate from the rate since the start; empty until that rate means much."""
        elapsed = time.monotonic() - self.started
        fetched = self.done - self.present
        if elapsed < TIME_LEFT_AFTER_S or fetched <= 0:
            return ""
        return time_left_text((self.total - self.done) * elapsed / fetched)


def time_left_text(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute left"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60:02d} min left"


def _remove_partial_files(dest: Path, since: float) -> None:
    """Delete the partial file(s) of a killed child's transfer.

    huggingface-hub (2.x) writes each transfer to a uniquely named `*.incomplete` file under
    dest/.cache/huggingface/download and never resumes it, so a killed transfer would leave up
    to a whole shard (gigabytes for Fathom) behind at every Cancel. Only files written since this
    run started are ours to remove.
    """
    partial_dir = dest / ".cache" / "huggingface" / "download"
    for partial in partial_dir.rglob("*.incomplete") if partial_dir.is_dir() else ():
        try:
            if partial.stat().st_mtime >= since - 1:
                partial.unlink()
        except OSError:
            continue


def download_folder(
    repo_id: str, dest: Path, progress: JobProgress, cancel: threading.Event
) -> Path:
    """Download a checkpoint in a child process, so that Cancel can stop it at once.

    The child reports the needed files' total before transferring; from then on the folder's
    growth is progress against it. huggingface-hub keeps finished files, so a later Download
    fetches only what a cancelled one had not finished.
    """
    if not looks_like_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face repo id like {DEFAULT_REPO}.")
    # spawn: a forked child would inherit Qt's threads' locks half-held.
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_download_in_child, args=(sender, repo_id, str(dest)), daemon=True)
    step = f"Downloading {repo_id}"
    started = time.time()
    progress.start(step, 0)
    child.start()
    sender.close()
    outcome: tuple[str, str] | None = None
    meter: _DownloadMeter | None = None
    try:
        while outcome is None:
            if cancel.is_set():
                raise JobCancelled("Download cancelled; finished files are kept for next time.")
            if receiver.poll(DOWNLOAD_POLL_S):
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    break
                if kind == "total":
                    total, present = payload
                    meter = _DownloadMeter(total, present, _folder_bytes(dest))
                    progress.start(step, total, meter.done)
                else:
                    outcome = (kind, payload)
            elif meter is not None:
                progress.set_done(meter.update(_folder_bytes(dest)), meter.time_left())
            elif dest.exists():
                progress.message(f"{human_size(_folder_bytes(dest))} downloaded")
    finally:
        if child.is_alive() and outcome is None:
            child.kill()
            child.join()
            _remove_partial_files(dest, since=started)
        child.join()
        receiver.close()
    if outcome is None:
        raise RuntimeError(f"The download stopped unexpectedly (exit code {child.exitcode}).")
    kind, text = outcome
    if kind == "error":
        raise RuntimeError(text)
    progress.finish()
    return Path(text)


# -- running a step on a worker thread ----------------------------------------------------------


class Job(QObject):
    """Runs one step on its own QThread; results come back as signals."""

    progress = Signal(str, int, int, str)  # step, done bytes, total bytes (0: unknown), message
    succeeded = Signal(object)
    failed = Signal(str)  # one readable line
    cancelled = Signal(str)

    def __init__(self, step: Callable[[JobProgress, threading.Event], object]) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self._step = step
        self.thread = QThread()
        self.moveToThread(self.thread)
        # Direct: started is emitted in the new thread, where this object now lives.
        self.thread.started.connect(self.run, Qt.ConnectionType.DirectConnection)

    def start(self) -> None:
        self.thread.start()

    @Slot()
    def run(self) -> None:
        progress = JobProgress(self.progress.emit, self.cancel)
        try:
            result = self._step(progress, self.cancel)
        except JobCancelled as stop:
            self.cancelled.emit(str(stop))
        except Exception as error:  # every failure reaches the user as one line
            if self.cancel.is_set():
                self.cancelled.emit("Cancelled; nothing unfinished was kept.")
            else:
                self.failed.emit(_one_line(error))
        else:
            self.succeeded.emit(result)
        finally:
            self.thread.quit()

    def stop_and_wait(self) -> None:
        self.cancel.set()
        self.thread.quit()
        self.thread.wait()


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if not text:
        return f"The step failed ({type(error).__name__})."
    return " ".join(text.split())
