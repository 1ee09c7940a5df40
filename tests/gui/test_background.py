"""Blocking work off the GUI thread: results and errors come back on the GUI thread, and an owner
closed before its work ends hears nothing (and nothing crashes)."""

from __future__ import annotations

import threading

from PySide6.QtCore import QCoreApplication, QEvent
from PySide6.QtWidgets import QWidget

from fathom_desktop.gui.background import BackgroundJobs


def test_results_and_errors_arrive_on_the_gui_thread(qtbot) -> None:
    jobs = BackgroundJobs()
    seen: list[tuple[str, object, bool]] = []
    worker_threads: list[threading.Thread] = []

    def work() -> int:
        worker_threads.append(threading.current_thread())
        return 42

    def fail() -> None:
        raise OSError("disk on fire")

    def on_main(kind: str, value: object) -> None:
        seen.append((kind, value, threading.current_thread() is threading.main_thread()))

    jobs.run(work, lambda v: on_main("result", v))
    jobs.run(fail, lambda v: on_main("result", v), lambda e: on_main("error", str(e)))
    qtbot.waitUntil(lambda: jobs.pending() == 0)
    assert sorted(seen) == [("error", "disk on fire", True), ("result", 42, True)]
    assert worker_threads and worker_threads[0] is not threading.main_thread()


def test_an_owner_closed_before_the_work_ends_hears_nothing(qtbot) -> None:
    owner = QWidget()
    jobs = BackgroundJobs(owner)
    release = threading.Event()
    heard: list[object] = []

    def slow() -> str:
        release.wait(10)
        return "late"

    job = jobs.run(slow, heard.append)
    owner.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    worker = next(t for t in threading.enumerate() if t.name == f"background-job-{job}")
    release.set()
    worker.join(10)  # its result has been posted by now
    # A later result, posted after it, arrives; the closed owner's never did.
    other = BackgroundJobs()
    done: list[object] = []
    other.run(lambda: "on time", done.append)
    qtbot.waitUntil(lambda: done == ["on time"])
    assert heard == []
