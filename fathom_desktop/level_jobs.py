"""Making and measuring quantization levels for the window, in a child process.

The window never loads llama.cpp (a crash there must not take the conversation with it), but
making a level may need the importance matrix and measuring runs the models. So the window asks
a child, `python -c CHILD_CODE <request as JSON>` (the packaged launcher serves this code too),
which does the work with the converter's own functions and reports on its stdout as JSON lines:

    ["progress", step, done, total, message]     as the work advances
    ["made", path]   ["measured", path]           as each output is complete and recorded
    ["done"]  |  ["cancelled"]  |  ["error", one line]

Cancel writes "cancel" to the child's stdin (its end of the pipe closing means the same): the
child sets the event every step polls, each step removes its partial output as it unwinds, and
the child exits. Should it not exit in time it is killed and the parent removes the partial
names itself, so a cancelled Make never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from convert.progress import CancellableProgress

CHILD_CODE = "from fathom_desktop.level_jobs import child_main; child_main()"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# How long a cancelled child may take to unwind (a quantizer child to be killed, files removed).
CANCEL_GRACE_S = 10.0
PROGRESS_INTERVAL_S = 0.1


@dataclass(frozen=True)
class LevelWork:
    """What one child does: make `make` levels of the model from `source`, then measure
    `measure` files against `source`."""

    source: str  # the model's BF16/F16 GGUF
    out_dir: str
    basename: str
    make: tuple[str, ...] = ()  # ladder type names
    measure: tuple[str, ...] = ()  # level files
    imatrix: str | None = None  # the model's importance matrix (used when present, else made)
    make_imatrix: bool = False  # make it even when no level to make requires it
    chunks: int = 100
    ctx: int = 512
    imatrix_chunks: int | None = 100
    n_threads: int | None = None
    # Layers on the GPU for the forward passes (None: all the build can offload).
    n_gpu_layers: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LevelWork:
        data = json.loads(text)
        for key in ("make", "measure"):
            data[key] = tuple(data[key])
        return cls(**data)

    def outputs(self) -> list[Path]:
        """Every file the work may write (for removing partial names after a kill)."""
        from convert.quantize import output_name

        out = [Path(self.out_dir) / output_name(self.basename, q) for q in self.make]
        if self.imatrix:
            out.append(Path(self.imatrix))
        out.append(Path(self.out_dir) / "manifest.json")
        return out


class WorkCancelled(Exception):
    pass


# -- the child ----------------------------------------------------------------------------------


class _ChannelProgress(CancellableProgress):
    """The converter's Progress, sent to the parent as JSON lines; raises once cancelled."""

    def __init__(self, send: Callable[..., None], cancel: threading.Event) -> None:
        super().__init__(
            lambda *progress: send("progress", *progress),
            cancel,
            WorkCancelled,
            PROGRESS_INTERVAL_S,
        )

    def step(self, name: str) -> None:
        self._step, self._done, self._total = name, 0, 0
        self._emit(force=True)

    def start(self, step: str, total_bytes: int, done_bytes: int = 0) -> None:
        self._check()
        # Keep the work's own step name ("Q4_K_M") over the converter's inner ones ("sha256 …").
        self._done, self._total = done_bytes, total_bytes
        self._emit(step, force=True)


def child_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cancels; a terminal's ^C is its
    work = LevelWork.from_json(sys.argv[1])
    # stdout is the channel; llama.cpp and anything else printing goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    lock = threading.Lock()

    def send(*message: object) -> None:
        with lock:
            channel.write(json.dumps(message) + "\n")

    cancel = threading.Event()

    def watch_parent() -> None:
        # Raw reads: a daemon thread inside the buffered stdin would abort interpreter exit.
        buffer = b""
        while True:
            chunk = os.read(sys.stdin.fileno(), 4096)
            buffer += chunk
            if not chunk or b"cancel" in buffer:
                cancel.set()
                return

    threading.Thread(target=watch_parent, daemon=True).start()
    progress = _ChannelProgress(send, cancel)
    try:
        run_work(work, progress, cancel, send)
    except (WorkCancelled, KeyboardInterrupt):
        send("cancelled")
    except Exception as error:  # noqa: BLE001 - one line for the user, the rest to the log
        from convert.errors import ConversionError

        if not isinstance(error, ConversionError | OSError):
            import traceback

            traceback.print_exc()
        text = " ".join((str(error) or type(error).__name__).split())
        if cancel.is_set():
            send("cancelled")
        else:
            send("error", text)
    else:
        send("done")
    channel.close()
    sys.stderr.flush()
    os._exit(0)  # without waiting for the watcher thread


def run_work(
    work: LevelWork,
    progress: _ChannelProgress,
    cancel: threading.Event,
    send: Callable[..., None],
) -> None:
    """Make the levels asked for (the importance matrix first when needed), then measure."""
    from convert.evaluate import evaluate
    from convert.imatrix import compute_imatrix
    from convert.llama_forward import ForwardSettings
    from convert.manifest import describe_file, gguf_source, read_manifest, update_manifest
    from convert.quantize import ImatrixUse, output_name, quant_type, quantize

    source, out_dir = Path(work.source), Path(work.out_dir)
    settings = ForwardSettings(n_gpu_layers=_gpu_layers(work, source), n_threads=work.n_threads)
    types = [quant_type(name) for name in work.make]
    imatrix = Path(work.imatrix) if work.imatrix else None
    need_matrix = work.make_imatrix or any(q.imatrix is ImatrixUse.REQUIRED for q in types)
    if imatrix is not None and need_matrix and not imatrix.is_file():
        progress.step("importance matrix")
        compute_imatrix(
            source,
            imatrix,
            chunks=work.imatrix_chunks,
            settings=settings,
            progress=progress,
            cancel=cancel,
        )
    repo, revision = gguf_source(source)
    if types:
        known = read_manifest(out_dir).files
        if source.name not in known and source.parent == out_dir:
            # Measuring and tracing need the reference's hash; record it once.
            progress.step(f"hashing {source.name}")
            update_manifest(
                out_dir,
                [
                    describe_file(
                        source,
                        _file_type(source),
                        source_repo=repo,
                        source_revision=revision,
                        progress=progress,
                    )
                ],
            )
    for q in types:
        progress.step(q.name)
        out = out_dir / output_name(work.basename, q)
        guide = (
            imatrix
            if (imatrix is not None and imatrix.is_file() and q.imatrix is not ImatrixUse.NONE)
            else None
        )
        quantize(
            source,
            out,
            q,
            n_threads=work.n_threads,
            progress=progress,
            cancel=cancel,
            imatrix=guide,
        )
        entry = describe_file(
            out,
            q.name,
            source_repo=repo,
            source_revision=revision,
            progress=progress,
            imatrix=guide,
        )
        update_manifest(out_dir, [entry])
        send("made", str(out))
    if work.measure:
        levels = [Path(p) for p in work.measure]
        progress.step("measuring")
        evaluate(
            source,
            levels,
            ctx=work.ctx,
            chunks=work.chunks,
            settings=settings,
            progress=progress,
            cancel=cancel,
        )
        # A level the manifest does not list gets an entry, so its measurement can be trusted
        # to be this file's (the dialog matches measurements to files by their sha256).
        known = read_manifest(out_dir).files
        missing = [p for p in levels if p.parent == out_dir and p.name not in known]
        if missing:
            update_manifest(
                out_dir,
                [
                    describe_file(p, _file_type(p), source_repo=repo, source_revision=revision)
                    for p in missing
                ],
            )
        for level in levels:
            send("measured", str(level))


def _gpu_layers(work: LevelWork, source: Path) -> int | None:
    """The layers on the GPU for every forward pass: as asked, else as many as the planner fits
    for the reference (the largest model of the job) in the GPU's free memory at `ctx`."""
    if work.n_gpu_layers is not None or not (work.measure or work.make_imatrix or work.make):
        return work.n_gpu_layers
    from fathom_desktop.engine import planner

    try:
        return planner.plan_offload(source, n_ctx=work.ctx).n_gpu_layers
    except Exception:  # noqa: BLE001 - an unreadable GPU means the CPU, not a failed job
        return 0


def _file_type(path: Path) -> str:
    from fathom_desktop.model_ladder import quant_from_name

    return quant_from_name(path.name) or "?"


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class WorkOutcome:
    status: str  # "done" | "cancelled" | "error"
    message: str = ""
    made: list[Path] = field(default_factory=list)
    measured: list[Path] = field(default_factory=list)


class LevelWorker:
    """Runs one LevelWork in a child process; callbacks come on the reading thread."""

    def __init__(
        self,
        work: LevelWork,
        on_progress: Callable[[str, int, int, str], None] | None = None,
        on_made: Callable[[Path], None] | None = None,
    ) -> None:
        self.work = work
        self._on_progress = on_progress or (lambda *_: None)
        self._on_made = on_made or (lambda _p: None)
        self._child: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()

    def run(self) -> WorkOutcome:
        """Start the child and wait for it (call it off the GUI thread)."""
        env = dict(os.environ)
        # The child imports this package even from a checkout that is not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("GGML_NO_BACKTRACE", "1")
        self._child = child = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, self.work.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            encoding="utf-8",
            errors="replace",
            start_new_session=os.name == "posix",
        )
        if self._cancelled.is_set():
            self._send_cancel()
        tail: list[str] = []

        def read_stderr() -> None:
            assert child.stderr is not None
            for line in child.stderr:
                if line.strip():
                    tail.append(line.strip())
                    del tail[:-20]

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        outcome = WorkOutcome("error")
        assert child.stdout is not None
        for line in child.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            kind = message[0]
            if kind == "progress":
                self._on_progress(*message[1:5])
            elif kind == "made":
                outcome.made.append(Path(message[1]))
                self._on_made(Path(message[1]))
            elif kind == "measured":
                outcome.measured.append(Path(message[1]))
            elif kind in ("done", "cancelled"):
                outcome.status = kind
            elif kind == "error":
                outcome.status, outcome.message = "error", message[1]
        child.wait()
        reader.join(timeout=5)
        if outcome.status == "error" and not outcome.message:
            if self._cancelled.is_set():
                outcome.status = "cancelled"
            else:
                last = tail[-1] if tail else "no message"
                outcome.message = (
                    f"The worker stopped abruptly ({_describe_exit(child.returncode)}): {last}"
                )
        if outcome.status == "cancelled" or child.returncode != 0:
            self._remove_partials()
        return outcome

    def cancel(self) -> None:
        """Ask the child to stop; kill it if it has not within CANCEL_GRACE_S. Any thread."""
        self._cancelled.set()
        if self._child is None:
            return
        self._send_cancel()
        child = self._child

        def kill_if_stuck() -> None:
            try:
                child.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)

        threading.Thread(target=kill_if_stuck, daemon=True).start()

    def _send_cancel(self) -> None:
        child = self._child
        if child is None or child.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            child.stdin.write("cancel\n")
            child.stdin.flush()
            child.stdin.close()

    def _remove_partials(self) -> None:
        from convert.atomic import partial_path

        for out in self.work.outputs():
            partial_path(out).unlink(missing_ok=True)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
