"""Background lanes: one thread each, running jobs in order and answering on the GUI thread.

Rendering uses them for work that can take longer than a frame (parsing a hostile piece of
Markdown, turning an answer into plain text for Copy). The jobs are pure Python; their results are
handed to a callback on the GUI thread, where widgets live. Formulas do not use a lane: their
layout is the heaviest pure-Python work, so it runs in a process of its own (layout_process.py).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

log = logging.getLogger(__name__)

# A lane runs pure Python, holding the GIL; each time the GUI thread comes back from Qt (every
# layout callback of a formula object is one such time) it may wait up to one switch interval for
# it, 5 ms by default. 0.2 ms cut the worst stall with 1,500 formulas arriving, when they were
# laid out on a lane, from 150 ms to 70 ms (bench/render_worst_case.py) at no measurable cost to
# the lanes' throughput.
SWITCH_INTERVAL_S = 0.0002


class Ticket:
    """Lets the GUI withdraw a job it no longer needs (the answer showing it was closed)."""

    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def wanted(self) -> bool:
        return not self._cancelled


@dataclass(frozen=True)
class NoResult:
    """What a callback gets for a job that was skipped or raised."""

    reason: str  # "cancelled" or "failed"


@dataclass
class _Job:
    work: Callable[[], Any]
    deliver: Callable[[Any], None]
    ticket: Ticket


class BackgroundLane(QObject):
    _done = Signal(object, object)  # job, result

    def __init__(self, name: str, newest_first: bool = False) -> None:
        super().__init__()
        self._jobs: queue.Queue[_Job] = queue.LifoQueue() if newest_first else queue.Queue()
        # Queued: emitted on the lane's thread, the callback must run on the GUI thread.
        self._done.connect(self._deliver, Qt.ConnectionType.QueuedConnection)
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        work: Callable[[], Any],
        deliver: Callable[[Any], None],
        ticket: Ticket | None = None,
    ) -> None:
        self._jobs.put(_Job(work, deliver, ticket or Ticket()))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if not job.ticket.wanted():
                result: Any = NoResult("cancelled")
            else:
                try:
                    result = job.work()
                except Exception:  # a bug in one job must not end the lane
                    log.exception("background job failed")
                    result = NoResult("failed")
            self._done.emit(job, result)

    def _deliver(self, job: _Job, result: Any) -> None:
        job.deliver(result)
