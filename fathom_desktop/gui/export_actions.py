"""File › Export conversation… and the sidebar's Export…: a save dialog offering Markdown (the
reasoning folded in `<details>`) and JSON, the file written atomically off the GUI thread, and
one line when it cannot be written. The formats themselves are `fathom_desktop.export`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QStandardPaths, Signal
from PySide6.QtWidgets import QFileDialog, QWidget

from fathom_desktop.export import (
    ExportError,
    ExportFormat,
    render,
    suggested_file_name,
    write_export,
)
from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.history import ConversationSummary, History, HistoryError

FILTERS = {
    ExportFormat.MARKDOWN: "Markdown, reasoning folded (*.md)",
    ExportFormat.JSON: "JSON, everything kept (*.json)",
}


@dataclass(frozen=True)
class ExportChoice:
    path: Path
    fmt: ExportFormat


def destination_for(name: str, selected_filter: str) -> ExportChoice:
    """Where and how to write, from the save dialog's answer.

    A name ending in .md or .json says the format; a name without a suffix gets the chosen
    filter's; any other name is kept as typed and written in the chosen filter's format.
    """
    chosen = next((f for f, text in FILTERS.items() if text == selected_filter), None)
    path = Path(name)
    try:
        return ExportChoice(path, ExportFormat.from_path(path))
    except ExportError:
        fmt = chosen or ExportFormat.MARKDOWN
        if not path.suffix:
            path = path.with_name(path.name + fmt.suffix)
        return ExportChoice(path, fmt)


# Asks where to save: (parent, suggested path, selected filter) -> the answer, or None if cancelled.
AskDestination = Callable[[QWidget | None, Path, ExportFormat], ExportChoice | None]


def ask_with_save_dialog(
    parent: QWidget | None, suggested: Path, fmt: ExportFormat
) -> ExportChoice | None:
    name, selected = QFileDialog.getSaveFileName(
        parent,
        "Export conversation",
        str(suggested),
        ";;".join(FILTERS.values()),
        FILTERS[fmt],
    )
    return destination_for(name, selected) if name else None


def _default_folder() -> Path:
    """Documents where there is such a folder, else home: a save dialog given a folder that does
    not exist opens wherever the app was started from."""
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    if documents and Path(documents).is_dir():
        return Path(documents)
    return Path.home()


class ConversationExporter(QObject):
    """Exports one conversation on request; says how it went by `exported` or `failed`."""

    exported = Signal(object)  # Path
    failed = Signal(str)  # one line for the user

    def __init__(
        self,
        history: History,
        parent: QWidget | None = None,
        ask: AskDestination = ask_with_save_dialog,
    ) -> None:
        super().__init__(parent)
        self._history = history
        self._parent = parent
        # Replaceable: tests answer the save dialog with a path.
        self.ask_destination = ask
        self._folder: Path | None = None  # where the last export went
        self._format = ExportFormat.MARKDOWN
        self._jobs = BackgroundJobs(self)

    def export(self, conversation_id: int | None) -> None:
        if conversation_id is None:
            self.failed.emit("There is nothing to export yet: this chat has no messages.")
            return
        try:
            summary = self._history.conversation(conversation_id)
            messages = self._history.messages(conversation_id)
        except HistoryError as error:
            self.failed.emit(str(error))
            return
        choice = self.ask_destination(self._parent, self._suggested(summary), self._format)
        if choice is None:
            return
        self._folder, self._format = choice.path.parent, choice.fmt
        text = render(summary, messages, choice.fmt)
        # The write may meet a slow or network disk: off the GUI thread.
        self._jobs.run(
            lambda: write_export(choice.path, text), self.exported.emit, self._write_failed
        )

    def busy(self) -> bool:
        return self._jobs.pending() > 0

    def _suggested(self, summary: ConversationSummary) -> Path:
        folder = self._folder or _default_folder()
        return folder / suggested_file_name(summary, self._format)

    def _write_failed(self, error: BaseException) -> None:
        if isinstance(error, ExportError):
            self.failed.emit(str(error))
        else:
            self.failed.emit(f"Could not export the conversation: {error}")
