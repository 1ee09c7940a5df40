"""Blocking work (file reads, NVML) off the GUI thread, with its result delivered back on it.

`BackgroundJobs.run(work, on_result, on_error)` calls `work()` in a daemon thread and later calls
`on_result(value)` or `on_error(exception)` on the GUI thread. Daemon threads, not a QThreadPool
owned by a widget: a pool's destructor waits for its threads, so closing a dialog while a read
hangs on a slow disk would freeze the window, and a hung read must not hold up the app's exit.

Results travel through one relay object that lives as long as the app; each `BackgroundJobs`
listens to it, so a dialog closed before its jobs finish simply never hears of them (Qt drops
the connection of a deleted receiver), and no thread ever emits on a deleted object.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal


@dataclass(frozen=True)
class _Outcome:
    owner: int
    job: int
    value: object
    error: BaseException | None


class _Relay(QObject):
    finished = Signal(object)  # _Outcome


_relay: _Relay | None = None
_relay_lock = threading.Lock()


def _the_relay() -> _Relay:
    global _relay
    with _relay_lock:
        if _relay is None:
            _relay = _Relay()
        return _relay


_owner_ids = itertools.count(1)
_job_ids = itertools.count(1)


class BackgroundJobs(QObject):
    """Runs blocking calls off the GUI thread for one owner (a dialog, a widget)."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._owner = next(_owner_ids)
        self._waiting: dict[
            int, tuple[Callable[[Any], None], Callable[[BaseException], None] | None]
        ] = {}
        # Queued: the relay emits in a worker thread; the callbacks touch widgets.
        _the_relay().finished.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    def run(
        self,
        work: Callable[[], object],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> int:
        """Start `work` in a background thread; returns the job's id."""
        job = next(_job_ids)
        self._waiting[job] = (on_result, on_error)
        owner, relay = self._owner, _the_relay()

        def call() -> None:
            try:
                outcome = _Outcome(owner, job, work(), None)
            except Exception as error:  # delivered to on_error on the GUI thread
                outcome = _Outcome(owner, job, None, error)
            relay.finished.emit(outcome)

        threading.Thread(target=call, name=f"background-job-{job}", daemon=True).start()
        return job

    def pending(self) -> int:
        """Jobs started and not yet delivered."""
        return len(self._waiting)

    def forget(self) -> None:
        """Drop every job's callbacks: their results, when they come, are ignored."""
        self._waiting.clear()

    def _deliver(self, outcome: _Outcome) -> None:
        if outcome.owner != self._owner:
            return
        callbacks = self._waiting.pop(outcome.job, None)
        if callbacks is None:
            return
        on_result, on_error = callbacks
        if outcome.error is None:
            on_result(outcome.value)
        elif on_error is not None:
            on_error(outcome.error)
        else:
            raise outcome.error
