"""The app's running Make and Measure jobs, shared by every settings dialog and the demo start.

A job (fathom_desktop/level_jobs.py: a child process) outlives the dialog that started it: a
10 GB level keeps being made when the dialog is closed, and a dialog opened later shows its
progress. One `LadderJobs` per app (`ladder_jobs()`); its signals are emitted on the GUI thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot

from fathom_desktop.level_jobs import LevelWork, LevelWorker, WorkOutcome


@dataclass(frozen=True)
class JobProgress:
    step: str
    done: int
    total: int
    message: str

    @property
    def percent(self) -> int | None:
        return min(100, 100 * self.done // self.total) if self.total > 0 else None


class LadderJobs(QObject):
    """Starts LevelWork children and reports on them; at most one per key at a time."""

    # Emitted from the workers' threads, delivered queued to the GUI-thread slots below.
    _progress_from_worker = Signal(str, str, int, int, str)
    _made_from_worker = Signal(str, str)
    _finished_from_worker = Signal(str, object)

    progress = Signal(str, object)  # key, JobProgress
    made = Signal(str, object)  # key, Path: a level is complete and recorded in the manifest
    finished = Signal(str, object)  # key, WorkOutcome
    started = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._workers: dict[str, LevelWorker] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._last: dict[str, JobProgress] = {}
        queued = Qt.ConnectionType.QueuedConnection  # emitted on worker threads; slots touch state
        self._progress_from_worker.connect(self._on_progress, queued)
        self._made_from_worker.connect(self._on_made, queued)
        self._finished_from_worker.connect(self._on_finished, queued)

    def start(self, key: str, work: LevelWork) -> bool:
        """Run `work` under `key`; False when a job with that key is already running."""
        if key in self._workers:
            return False
        worker = LevelWorker(
            work,
            on_progress=lambda s, d, t, m: self._progress_from_worker.emit(key, s, d, t, m),
            on_made=lambda p: self._made_from_worker.emit(key, str(p)),
        )
        self._workers[key] = worker
        self._last[key] = JobProgress("starting", 0, 0, "")

        def run() -> None:
            try:
                outcome = worker.run()
            except Exception as error:  # noqa: BLE001 - the child could not even start
                outcome = WorkOutcome("error", str(error))
            self._finished_from_worker.emit(key, outcome)

        thread = threading.Thread(target=run, name=f"ladder-job-{key}", daemon=True)
        self._threads[key] = thread
        thread.start()
        self.started.emit(key)
        return True

    def running(self) -> dict[str, LevelWork]:
        return {key: worker.work for key, worker in self._workers.items()}

    def last_progress(self, key: str) -> JobProgress | None:
        return self._last.get(key)

    def cancel(self, key: str) -> None:
        worker = self._workers.get(key)
        if worker is not None:
            worker.cancel()

    def cancel_all(self, wait_s: float = 0.0) -> None:
        """Cancel every job (the app is closing); wait up to `wait_s` for them to unwind."""
        for worker in list(self._workers.values()):
            worker.cancel()
        for thread in list(self._threads.values()):
            thread.join(timeout=wait_s)

    @Slot(str, str, int, int, str)
    def _on_progress(self, key: str, step: str, done: int, total: int, message: str) -> None:
        if key in self._workers:
            self._last[key] = JobProgress(step, done, total, message)
            self.progress.emit(key, self._last[key])

    @Slot(str, str)
    def _on_made(self, key: str, path: str) -> None:
        self.made.emit(key, Path(path))

    @Slot(str, object)
    def _on_finished(self, key: str, outcome: WorkOutcome) -> None:
        self._workers.pop(key, None)
        self._threads.pop(key, None)
        self._last.pop(key, None)
        self.finished.emit(key, outcome)


_jobs: LadderJobs | None = None


def ladder_jobs() -> LadderJobs:
    """The app's one LadderJobs (made on first use, on the GUI thread)."""
    global _jobs
    if _jobs is None:
        app = QCoreApplication.instance()
        _jobs = LadderJobs(app)
        if app is not None:
            # Closing the app cancels what runs; each child removes its partial output.
            app.aboutToQuit.connect(lambda: _jobs.cancel_all(wait_s=5.0) if _jobs else None)
            app.destroyed.connect(_forget)
    return _jobs


def _forget(*_args: object) -> None:
    global _jobs
    _jobs = None
