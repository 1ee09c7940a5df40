"""The history writer's reports, delivered on the GUI thread as a Qt signal.

`History` calls its listeners on the writer's own thread. `HistoryReports` lives in the GUI
thread: it posts each report to itself across threads and emits `report(WriteReport)` from the
GUI thread, so anything connected to `report` may touch widgets.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal, Slot

from fathom_desktop.history import History, WriteReport


class HistoryReports(QObject):
    report = Signal(object)  # WriteReport, emitted on the GUI thread
    _posted = Signal(object)  # emitted on the writer's thread

    def __init__(self, history: History, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # Auto connection: the writer's thread is not this object's, so delivery is queued.
        self._posted.connect(self._deliver)
        alive = [True]
        # A lambda, not a method: when `destroyed` fires the Python side is half gone.
        self.destroyed.connect(lambda: alive.__setitem__(0, False))
        posted = self._posted

        def relay(report: WriteReport) -> None:
            # Runs on the writer's thread; the history may outlive the window by a moment.
            if alive[0]:
                try:
                    posted.emit(report)
                except RuntimeError:  # deleted between the check and the emit
                    alive[0] = False

        history.add_listener(relay)

    @Slot(object)
    def _deliver(self, report: WriteReport) -> None:
        self.report.emit(report)
