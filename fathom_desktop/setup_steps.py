"""The steps of getting Fathom-R1-14B (model_setup), each run in a child process.

`run_step` starts one step in a spawned child (the packaged app's launcher runs these through
multiprocessing.freeze_support) and relays its progress; the child runs the pipeline's own
functions (download, convert, imatrix, quantize, evaluate). Two one-way pipes join them: progress
and the outcome come back on one; "stop" goes out on the other, and its closing (the window
process gone, even killed) stops the child too. A stopped step unwinds through atomic_output,
which deletes its partial file; one that does not stop in time is killed and the parent deletes
it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from convert.atomic import partial_path
from convert.errors import ConversionError, one_line
from fathom_desktop.model_setup import (
    UNQUANTIZED,
    SetupPlan,
    Step,
    StepCancelled,
    check_space,
    needs_imatrix,
)

log = logging.getLogger(__name__)

# Time a cancelled child gets to unwind (delete its partial output) before it is killed.
CANCEL_GRACE_S = 5.0
POLL_S = 0.2
# Report progress from the child at most this often: a message per tensor would be wasted.
REPORT_INTERVAL_S = 0.1
DOWNLOAD_METER_S = 0.5


# -- the steps (run in the child) ------------------------------------------------------------


class ChildProgress:
    """The pipeline's Progress protocol, sent to the parent through a pipe (throttled).

    `raise_on_cancel`: for steps that take no cancel event (the conversion, the hashing), a
    cancel raises inside them so that atomic_output removes the partial file."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], cancel: threading.Event) -> None:
        self._send = send
        self._cancel = cancel
        self.raise_on_cancel = True
        self._last = 0.0
        self._pending = 0

    def _check(self) -> None:
        if self.raise_on_cancel and self._cancel.is_set():
            raise StepCancelled

    def start(self, step: str, total_bytes: int) -> None:
        self._check()
        self._flush()
        self._send(("start", step, total_bytes))

    def advance(self, n_bytes: int) -> None:
        self._check()
        self._pending += n_bytes
        if time.monotonic() - self._last >= REPORT_INTERVAL_S:
            self._flush()

    def message(self, text: str) -> None:
        self._check()
        if time.monotonic() - self._last >= REPORT_INTERVAL_S:
            self._flush()
            self._send(("message", text))

    def set_done(self, done_bytes: int) -> None:
        """For a step that measures how far it is (a download's folder) rather than counting."""
        self._pending = 0
        self._send(("set", done_bytes))

    def finish(self) -> None:
        self._flush()

    def _flush(self) -> None:
        self._last = time.monotonic()
        if self._pending:
            self._send(("advance", self._pending))
            self._pending = 0


def _record(
    path: Path, quant: str, plan: SetupPlan, progress: ChildProgress, imatrix: Path | None
) -> None:
    from convert.download import read_source
    from convert.manifest import describe_file, update_manifest

    source = read_source(plan.checkpoint_dir)
    entry = describe_file(
        path,
        quant,
        source_repo=source.repo_id if source else plan.repo_id,
        source_revision=source.revision if source else None,
        progress=progress,
        imatrix=imatrix,
    )
    try:
        update_manifest(plan.models_dir, [entry])
    except ConversionError as error:  # the file is complete and usable; only its record failed
        log.warning("%s", error)


def _convert(
    plan: SetupPlan, level: str | None, progress: ChildProgress, cancel: threading.Event
) -> dict[str, Any]:
    from convert.download import read_source
    from convert.gguf_convert import convert_checkpoint

    source = read_source(plan.checkpoint_dir)
    convert_checkpoint(
        plan.checkpoint_dir,
        plan.bf16,
        "bf16",
        progress=progress,
        source_repo=source.repo_id if source else plan.repo_id,
        source_revision=source.revision if source else None,
    )
    # Recorded now, so the measurement later reads its sha256 instead of hashing 30 GB again.
    _record(plan.bf16, UNQUANTIZED, plan, progress, None)
    return {"file": str(plan.bf16)}


def _imatrix(
    plan: SetupPlan, level: str | None, progress: ChildProgress, cancel: threading.Event
) -> dict[str, Any]:
    from convert.imatrix import compute_imatrix
    from convert.llama_forward import ForwardSettings

    progress.raise_on_cancel = False  # it takes the cancel event and stops between chunks
    result = compute_imatrix(
        plan.bf16,
        plan.imatrix,
        chunks=plan.imatrix_chunks,
        settings=ForwardSettings(n_gpu_layers=plan.gpu_layers),
        progress=progress,
        cancel=cancel,
    )
    return {"file": str(result.path), "chunks": result.chunks}


def _quantize(
    plan: SetupPlan, level: str | None, progress: ChildProgress, cancel: threading.Event
) -> dict[str, Any]:
    from convert.quantize import quantize

    assert level is not None
    guide = plan.imatrix if needs_imatrix(level) else None
    progress.raise_on_cancel = False  # llama.cpp's child is killed through the cancel event
    result = quantize(
        plan.bf16, plan.level_file(level), level, progress=progress, cancel=cancel, imatrix=guide
    )
    progress.raise_on_cancel = True
    _record(result.path, level, plan, progress, guide)
    return {"file": str(result.path), "size_bytes": result.n_bytes}


def _measure(
    plan: SetupPlan, level: str | None, progress: ChildProgress, cancel: threading.Event
) -> dict[str, Any]:
    from convert.evaluate import evaluate
    from convert.llama_forward import ForwardSettings

    assert level is not None
    progress.raise_on_cancel = False
    report = evaluate(
        plan.bf16,
        [plan.level_file(level)],
        chunks=plan.measure_chunks,
        settings=ForwardSettings(n_gpu_layers=plan.gpu_layers),
        progress=progress,
        cancel=cancel,
    )
    stats = asdict(report.results[0].stats)
    return {"stats": stats, "ppl_reference": report.reference_ppl}


def _download(
    plan: SetupPlan, level: str | None, progress: ChildProgress, cancel: threading.Event
) -> dict[str, Any]:
    from convert.download import download_checkpoint

    # huggingface-hub reports nothing in between; the folder's growth since the start is the
    # progress (its metadata and earlier runs' leftovers do not count).
    stop_meter = threading.Event()

    def meter(total: int, present: int, baseline: int) -> None:
        while not stop_meter.wait(DOWNLOAD_METER_S):
            grown = max(0, _folder_bytes(plan.checkpoint_dir) - baseline)
            progress.set_done(min(total, present + grown))

    def started(total_bytes: int, present_bytes: int) -> None:
        progress.start(f"Downloading {plan.repo_id}", total_bytes)
        progress.set_done(present_bytes)
        baseline = _folder_bytes(plan.checkpoint_dir)
        args = (total_bytes, present_bytes, baseline)
        threading.Thread(target=meter, args=args, daemon=True).start()

    try:
        result = download_checkpoint(
            plan.repo_id, plan.checkpoint_dir, show_progress=False, on_start=started
        )
    finally:
        stop_meter.set()
    return {"folder": str(result.path), "revision": result.source.revision}


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


_WORK: dict[
    Step, Callable[[SetupPlan, str | None, ChildProgress, threading.Event], dict[str, Any]]
] = {
    Step.DOWNLOAD: _download,
    Step.CONVERT: _convert,
    Step.IMATRIX: _imatrix,
    Step.QUANTIZE: _quantize,
    Step.MEASURE: _measure,
}


def partial_outputs(plan: SetupPlan, step: Step, level: str | None) -> list[Path]:
    """What a killed step may leave under a hidden name, to be removed."""
    if step is Step.CONVERT:
        return [partial_path(plan.bf16)]
    if step is Step.IMATRIX:
        return [partial_path(plan.imatrix)]
    if step is Step.QUANTIZE and level is not None:
        return [partial_path(plan.level_file(level))]
    return []


def _child_main(
    step_value: str,
    plan_data: dict[str, Any],
    level: str | None,
    report: multiprocessing.connection.Connection,
    control: multiprocessing.connection.Connection,
) -> None:
    """The child: one step, its progress and outcome sent to the parent."""
    import signal

    # Ctrl-C in the terminal that started the app is the parent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cancel = threading.Event()

    def watch_parent() -> None:
        # "stop", or the pipe closing because the window process went away: either way, stop.
        with contextlib.suppress(EOFError, OSError):
            control.recv()
        cancel.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    lock = threading.Lock()  # the quantizer reports from its log-reading thread

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            report.send(message)

    step = Step(step_value)
    try:
        result = _WORK[step](
            SetupPlan.from_json(plan_data), level, ChildProgress(send, cancel), cancel
        )
    except (StepCancelled, KeyboardInterrupt):
        send(("cancelled",))
    except Exception as error:  # noqa: BLE001 - the parent shows one line, never a traceback
        if cancel.is_set():
            send(("cancelled",))
        elif isinstance(error, ConversionError | OSError):
            send(("error", one_line(error)))
        else:
            send(("error", f"{step.value} failed: {type(error).__name__}: {one_line(error)}"))
    else:
        send(("done", result))
    finally:
        report.close()


def run_step(
    plan: SetupPlan,
    step: Step,
    level: str | None,
    report: Callable[[str, int, int, str], None],
    cancel: threading.Event,
) -> dict[str, Any]:
    """Run one step in a child process; raises StepCancelled or ConversionError (one line).

    `report(step, done, total, message)` hears the progress; setting `cancel` asks the child to
    stop, and after CANCEL_GRACE_S it is killed and its partial output removed.
    """
    if step is Step.DOWNLOAD:
        _remove_stale_transfers(plan.checkpoint_dir)
    check_space(plan, step, level)
    # spawn: a forked child would inherit the window's Qt threads' locks half-held; the
    # packaged app's launcher runs spawn children through multiprocessing.freeze_support.
    ctx = multiprocessing.get_context("spawn")
    report_in, report_out = ctx.Pipe(duplex=False)
    control_in, control_out = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child_main,
        args=(step.value, plan.to_json(), level, report_out, control_in),
        daemon=True,
        name=f"fathom-{step.value}",
    )
    child.start()
    report_out.close()
    control_in.close()
    # A transfer has nothing to tidy (huggingface-hub keeps finished files): stop it at once.
    grace = 0.0 if step is Step.DOWNLOAD else CANCEL_GRACE_S
    title, done, total, message = step.value, 0, 0, ""
    outcome: tuple[Any, ...] | None = None
    asked_to_stop: float | None = None
    try:
        while outcome is None:
            if cancel.is_set() and asked_to_stop is None:
                asked_to_stop = time.monotonic()
                with contextlib.suppress(OSError):
                    control_out.send("stop")
            if asked_to_stop is not None and time.monotonic() - asked_to_stop > grace:
                break
            if not report_in.poll(POLL_S):
                if not child.is_alive() and not report_in.poll(0):
                    break
                continue
            try:
                message_in = report_in.recv()
            except EOFError:
                break
            kind = message_in[0]
            if kind == "start":
                title, total, done, message = message_in[1], message_in[2], 0, ""
            elif kind == "advance":
                done += message_in[1]
            elif kind == "set":
                done = message_in[1]
            elif kind == "message":
                message = message_in[1]
            else:
                outcome = message_in
                continue
            if not cancel.is_set():
                report(title, done, total, message)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        report_in.close()
        control_out.close()
        if outcome is None or outcome[0] != "done":
            for partial in partial_outputs(plan, step, level):
                partial.unlink(missing_ok=True)
            if step is Step.DOWNLOAD:
                _remove_stale_transfers(plan.checkpoint_dir)
    if outcome is None or outcome[0] == "cancelled" or cancel.is_set():
        if cancel.is_set():
            raise StepCancelled
        raise ConversionError(
            f"The {step.value} step stopped unexpectedly (exit code {child.exitcode})."
        )
    if outcome[0] == "error":
        raise ConversionError(outcome[1])
    return outcome[1]


def _remove_stale_transfers(folder: Path) -> None:
    """huggingface-hub never resumes a stopped run's `*.incomplete` file; up to a whole shard
    (gigabytes) would stay behind. Only one download runs at a time (one app instance)."""
    partial_dir = folder / ".cache" / "huggingface" / "download"
    if partial_dir.is_dir():
        for partial in partial_dir.rglob("*.incomplete"):
            partial.unlink(missing_ok=True)
