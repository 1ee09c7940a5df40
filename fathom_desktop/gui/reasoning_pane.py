"""The collapsible reasoning pane: live "Thinking… 1,234 tokens · 12 s", then "Thought for …".

The reasoning streams into a plain-text document (never HTML) by appending at its end; the pane
grows with the text up to a fixed height and then scrolls, following the tail only while the
reader is at the bottom.
"""

from __future__ import annotations

import time
from enum import StrEnum

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QKeyEvent, QTextCursor
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QPlainTextEdit,
    QScrollBar,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

# How close to the end (pixels) still counts as "at the bottom" for following the tail.
_TAIL_SLACK_PX = 24
REASONING_MAX_HEIGHT_PX = 260
# Qt lays out a whole paragraph again on every append to it: a reasoning with no line breaks
# would cost more per token as it grows. The pane shows such text broken into paragraphs of
# about this many characters; its copy and its stored text stay exactly as the model wrote it.
MAX_SHOWN_PARAGRAPH_CHARS = 800
# Live figures (token counts, speed) change text and so relayout; a person reads them at ~4 Hz.
LIVE_FIGURES_INTERVAL_S = 0.25


def tokens_text(count: int) -> str:
    return f"{count:,} token" + ("" if count == 1 else "s")


def seconds_text(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class TailFollower:
    """Keeps a scroll bar at its end while the user is there; stops when they scroll away."""

    def __init__(self, bar: QScrollBar) -> None:
        self._bar = bar
        self.at_bottom = True
        bar.valueChanged.connect(self._on_value)
        bar.rangeChanged.connect(self._on_range)

    def _on_value(self, value: int) -> None:
        self.at_bottom = value >= self._bar.maximum() - _TAIL_SLACK_PX

    def _on_range(self, _minimum: int, maximum: int) -> None:
        if self.at_bottom:
            self._bar.setValue(maximum)


class ReasoningState(StrEnum):
    WAITING = "waiting"  # the prompt is being read
    THINKING = "thinking"
    DONE = "done"
    STOPPED = "stopped"


class _HeaderButton(QToolButton):
    """Click, Space, Enter or Return toggles the pane."""

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.click()
            return
        super().keyPressEvent(event)


class ReasoningPane(QFrame):
    toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reasoningPane")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.state = ReasoningState.WAITING
        self.tokens = 0
        self._parts: list[str] = []
        self.answered_early = False
        self._started: float | None = None
        self._elapsed: float | None = None
        self._header_refreshed = 0.0

        self.header = _HeaderButton(self)
        self.header.setObjectName("reasoningHeader")
        self.header.setCheckable(True)
        self.header.setChecked(True)
        self.header.setAutoRaise(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.header.toggled.connect(self._on_toggled)
        self.copy_button = QToolButton(self)
        self.copy_button.setText("Copy reasoning")
        self.copy_button.setAutoRaise(True)
        self.copy_button.clicked.connect(self.copy)

        self.body = QPlainTextEdit(self)
        self.body.setObjectName("reasoningText")
        self.body.setReadOnly(True)
        self.body.setFrameShape(QFrame.Shape.NoFrame)
        self.body.setFixedHeight(24)
        self._follow = TailFollower(self.body.verticalScrollBar())
        font = self.body.font()
        font.setPointSizeF(font.pointSizeF() * 0.92)
        self.body.setFont(font)

        header_row = QHBoxLayout()
        header_row.setContentsMargins(0, 0, 0, 0)
        header_row.addWidget(self.header, 1)
        header_row.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 6)
        layout.setSpacing(2)
        layout.addLayout(header_row)
        layout.addWidget(self.body)

        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._refresh_header)
        self._refresh_header()

    # -- streaming ----------------------------------------------------------------------------

    def start_thinking(self) -> None:
        if self.state is ReasoningState.WAITING:
            self.state = ReasoningState.THINKING
            self._started = time.monotonic()
            self._clock.start()
            self._refresh_header()

    def resume(self, text: str, tokens: int, seconds: float) -> None:
        """Go on from a reasoning saved earlier: its text, tokens and time thinking so far."""
        self.start_thinking()
        if self._started is not None:
            self._started -= seconds
        self.append(text, tokens)

    def append(self, text: str, total_tokens: int) -> None:
        self.start_thinking()
        self._parts.append(text)
        document = self.body.document()
        if "\n" not in text and document.lastBlock().length() > MAX_SHOWN_PARAGRAPH_CHARS:
            space = text.find(" ")
            text = text[:space] + "\n" + text[space + 1 :] if space >= 0 else "\n" + text
        cursor = QTextCursor(document)
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self.tokens = total_tokens
        self._fit_body()
        if time.monotonic() - self._header_refreshed >= LIVE_FIGURES_INTERVAL_S:
            self._refresh_header()

    def replace_text(self, text: str, tokens: int) -> None:
        """Show another text in place of this one (a consensus view switching samples while
        they run); it streams on from there."""
        self._parts = [text]
        self.body.setPlainText(text)
        self.tokens = tokens
        self._fit_body()
        self._refresh_header()

    def finish(self, stopped: bool = False, tokens: int | None = None) -> None:
        if self.state in (ReasoningState.DONE, ReasoningState.STOPPED):
            # The pane closes when the answer starts; the engine's final count comes at the end.
            if tokens is not None and tokens != self.tokens:
                self.tokens = tokens
                self._refresh_header()
            return
        if self._started is not None:
            self._elapsed = time.monotonic() - self._started
        if tokens is not None:
            self.tokens = tokens
        self.state = ReasoningState.STOPPED if stopped else ReasoningState.DONE
        self._clock.stop()
        self._refresh_header()

    def restore(self, text: str, tokens: int, seconds: float | None, stopped: bool) -> None:
        """Show a stored reasoning (from history), finished and collapsed."""
        self._parts = [text]
        self.body.setPlainText(text)
        self._fit_body()
        self.tokens = tokens
        self._elapsed = seconds
        self._started = None  # a time not stored is not shown (nor counted from a live start)
        self.state = ReasoningState.STOPPED if stopped else ReasoningState.DONE
        self.set_expanded(False)
        self._refresh_header()

    # -- showing ------------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float | None:
        if self._elapsed is not None:
            return self._elapsed
        if self._started is not None:
            return time.monotonic() - self._started
        return None

    def text(self) -> str:
        """The reasoning exactly as the model wrote it."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def header_text(self) -> str:
        return self.header.text()

    def is_expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        self.header.setChecked(expanded)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text())

    def _fit_body(self) -> None:
        """Grow with the text up to REASONING_MAX_HEIGHT_PX, then scroll inside."""
        if self.body.height() >= REASONING_MAX_HEIGHT_PX:
            return
        # A plain-text layout measures its size in lines, not pixels.
        lines = self.body.document().documentLayout().documentSize().height()
        wanted = int(lines * self.body.fontMetrics().lineSpacing()) + 12
        self.body.setFixedHeight(max(min(wanted, REASONING_MAX_HEIGHT_PX), 24))

    def _on_toggled(self, expanded: bool) -> None:
        self.body.setVisible(expanded)
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.toggled.emit(expanded)

    def _refresh_header(self) -> None:
        self._header_refreshed = time.monotonic()
        elapsed = self.elapsed_s
        if self.state is ReasoningState.WAITING:
            text = "Reading the prompt…"
        elif self.state is ReasoningState.THINKING:
            text = f"Thinking… {tokens_text(self.tokens)} · {seconds_text(elapsed or 0)}"
        else:
            verb = "Stopped after thinking" if self.state is ReasoningState.STOPPED else "Thought"
            duration = f" for {seconds_text(elapsed)}" if elapsed is not None else ""
            text = f"{verb}{duration} · {tokens_text(self.tokens)}"
            if self.answered_early:
                text += " · answered early"
        self.header.setText(text)
        self.header.setArrowType(
            Qt.ArrowType.DownArrow if self.header.isChecked() else Qt.ArrowType.RightArrow
        )
