"""The history writer's reports, re-posted to the GUI thread as a Qt signal.

`History` calls its listeners on the writer's own thread. `HistoryReports` lives in the GUI
thread and re-emits each report as `report(WriteReport)`: a slot of a GUI-thread object gets it
queued, and so does any other callable connected with Qt.ConnectionType.QueuedConnection.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from fathom_desktop.history import History, WriteReport


class HistoryReports(QObject):
    report = Signal(object)  # WriteReport

    def __init__(self, history: History, parent: QObject | None = None) -> None:
        super().__init__(parent)
        alive = [True]
        # A lambda, not a method: when `destroyed` fires the Python side is half gone.
        self.destroyed.connect(lambda: alive.__setitem__(0, False))
        signal = self.report

        def relay(report: WriteReport) -> None:
            # Runs on the writer's thread; the history may outlive the window by a moment.
            if alive[0]:
                try:
                    signal.emit(report)
                except RuntimeError:  # deleted between the check and the emit
                    alive[0] = False

        history.add_listener(relay)
