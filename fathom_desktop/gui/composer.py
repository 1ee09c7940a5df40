"""Where you type: Enter sends, Shift+Enter starts a new line; Stop and Answer now while it runs."""

from __future__ import annotations

from enum import StrEnum

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget


class ComposerMode(StrEnum):
    READY = "ready"  # a model is loaded and nothing runs
    GENERATING = "generating"
    THINKING = "thinking"  # generating, and still in the reasoning (Answer now applies)
    UNAVAILABLE = "unavailable"  # no model yet, or one is loading


class _MessageEdit(QPlainTextEdit):
    send = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        is_enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if is_enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.send.emit()
            return
        if is_enter:
            # Shift+Enter: a paragraph break, not Qt's line separator (U+2028).
            self.textCursor().insertText("\n")
            return
        super().keyPressEvent(event)


class Composer(QWidget):
    send_requested = Signal(str)
    stop_requested = Signal()
    answer_now_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.edit = _MessageEdit(self)
        self.edit.setObjectName("messageEdit")
        self.edit.setPlaceholderText("Ask Fathom… (Enter sends, Shift+Enter for a new line)")
        self.edit.setFixedHeight(76)
        self.edit.setTabChangesFocus(True)
        self.edit.send.connect(self._send)
        self.send_button = QPushButton("Send", self)
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send)
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.clicked.connect(self.stop_requested)
        self.answer_now_button = QPushButton("Answer now", self)
        self.answer_now_button.setToolTip("End the reasoning here and ask for the answer")
        self.answer_now_button.clicked.connect(self._answer_now)

        buttons = QVBoxLayout()
        for button in (self.send_button, self.stop_button, self.answer_now_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.addWidget(self.edit, 1)
        layout.addLayout(buttons)
        self.mode = ComposerMode.UNAVAILABLE
        self.set_mode(ComposerMode.UNAVAILABLE)

    def set_mode(self, mode: ComposerMode) -> None:
        self.mode = mode
        running = mode in (ComposerMode.GENERATING, ComposerMode.THINKING)
        self.send_button.setVisible(not running)
        self.send_button.setEnabled(mode is ComposerMode.READY)
        self.stop_button.setVisible(running)
        self.answer_now_button.setVisible(running)
        self.answer_now_button.setEnabled(mode is ComposerMode.THINKING)

    def text(self) -> str:
        return self.edit.toPlainText()

    def set_text(self, text: str) -> None:
        self.edit.setPlainText(text)

    def take_sent(self, text: str) -> None:
        """`text` is in the conversation now: it leaves the composer. Until then it stays, so
        a message the history could not take is still here to send again."""
        if self.edit.toPlainText().strip() == text:
            self.edit.clear()

    def _send(self) -> None:
        text = self.edit.toPlainText().strip()
        if not text or self.mode is not ComposerMode.READY:
            return
        self.send_requested.emit(text)

    def _answer_now(self) -> None:
        self.answer_now_button.setEnabled(False)
        self.answer_now_requested.emit()
