"""The transcript: user messages, assistant messages (reasoning pane, answer, footer), notices.

Streaming text is appended at the end of each document (never a whole-text replace), so a
16k-token reasoning costs the same per batch at its end as at its start (the pane itself is in
`reasoning_pane`). The answer is rendered (Markdown + math) piece by piece as pieces settle, with
a time budget on the GUI thread (`answer_view`). Model text is never parsed as HTML: the
reasoning is a plain-text document and the answer goes through `fathom_desktop.render`, which
escapes everything.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.gui.answer_view import AnswerView
from fathom_desktop.gui.consensus_view import ConsensusView
from fathom_desktop.gui.reasoning_pane import ReasoningPane, TailFollower
from fathom_desktop.gui.welcome import WelcomeView
from fathom_desktop.gui.worker import SampleProgress
from fathom_desktop.history.samples import SampleRecord, VoteRecord

# -- messages -------------------------------------------------------------------------------------


class UserMessage(QFrame):
    """Your message; Edit turns it into an editor whose Resend drops everything after it."""

    edit_submitted = Signal(int, str)  # message id, new text

    def __init__(self, text: str, message_id: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("userMessage")
        self.message_id = message_id
        self.text = text
        self.label = QLabel(self)
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # never rich text, whatever it holds
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setText(text)
        self.editor = QPlainTextEdit(self)
        self.editor.setVisible(False)
        self.editor.setMaximumHeight(160)
        self.edit_button = QPushButton("Edit", self)
        self.edit_button.setFlat(True)
        self.edit_button.clicked.connect(self.begin_edit)
        self.resend_button = QPushButton("Resend", self)
        self.resend_button.clicked.connect(self._resend)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.cancel_edit)
        for button in (self.resend_button, self.cancel_button):
            button.setVisible(False)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.edit_button, self.cancel_button, self.resend_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 2)
        layout.setSpacing(2)
        title = QLabel("You", self)
        title.setObjectName("roleLabel")
        layout.addWidget(title)
        layout.addWidget(self.label)
        layout.addWidget(self.editor)
        layout.addLayout(buttons)

    def set_editable(self, editable: bool) -> None:
        self.edit_button.setEnabled(editable)
        self.resend_button.setEnabled(editable)

    def begin_edit(self) -> None:
        self.editor.setPlainText(self.text)
        self._show_editor(True)
        self.editor.setFocus()

    def cancel_edit(self) -> None:
        self._show_editor(False)

    def _resend(self) -> None:
        text = self.editor.toPlainText().strip()
        if not text:
            return
        self._show_editor(False)
        self.edit_submitted.emit(self.message_id, text)

    def _show_editor(self, editing: bool) -> None:
        self.label.setVisible(not editing)
        self.editor.setVisible(editing)
        self.edit_button.setVisible(not editing)
        self.resend_button.setVisible(editing)
        self.cancel_button.setVisible(editing)


class AssistantMessage(QFrame):
    """A reply: reasoning pane, answer, and a footer with its figures and actions."""

    regenerate_requested = Signal()
    continue_requested = Signal(int)  # message id

    def __init__(
        self, message_id: int, collapse_when_answering: bool = True, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("assistantMessage")
        self.message_id = message_id
        self.collapse_when_answering = collapse_when_answering
        self.reasoning = ReasoningPane(self)
        self.answer = AnswerView(self)
        self.answer.setVisible(False)
        self.error = QLabel(self)
        self.error.setObjectName("errorText")
        self.error.setTextFormat(Qt.TextFormat.PlainText)
        self.error.setWordWrap(True)
        self.error.setVisible(False)
        self.figures = QLabel(self)
        self.figures.setObjectName("figures")
        self.figures.setTextFormat(Qt.TextFormat.PlainText)
        self.figures.setWordWrap(True)  # a long line must not widen the transcript
        self.copy_button = QPushButton("Copy", self)
        self.copy_button.setToolTip("Copy the answer as plain text")
        self.copy_button.clicked.connect(self.copy_text)
        self.copy_latex_button = QPushButton("Copy LaTeX", self)
        self.copy_latex_button.setToolTip("Copy the answer's Markdown and LaTeX source")
        self.copy_latex_button.clicked.connect(self.copy_latex)
        self.regenerate_button = QPushButton("Regenerate", self)
        self.regenerate_button.clicked.connect(self.regenerate_requested)
        self.continue_button = QPushButton("Continue", self)
        self.continue_button.setToolTip("Go on writing this reply from where it ended")
        self.continue_button.clicked.connect(lambda: self.continue_requested.emit(self.message_id))
        self.continue_button.setVisible(False)
        self._footer = QWidget(self)
        footer = QHBoxLayout(self._footer)
        footer.setContentsMargins(0, 0, 0, 0)
        footer.addWidget(self.figures, 1)
        buttons = (
            self.continue_button,
            self.copy_button,
            self.copy_latex_button,
            self.regenerate_button,
        )
        for button in buttons:
            button.setFlat(True)
            footer.addWidget(button)
        self._footer.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(4)
        title = QLabel("Fathom", self)
        title.setObjectName("roleLabel")
        layout.addWidget(title)
        layout.addWidget(self.reasoning)
        layout.addWidget(self.answer)
        layout.addWidget(self.error)
        layout.addWidget(self._footer)
        self._layout = layout
        self.answer_started = False
        # A consensus reply: its lanes and vote above the panes, which show one sample.
        self.consensus: ConsensusView | None = None

    # -- streaming ----------------------------------------------------------------------------

    def append(self, reasoning: str, answer: str, reasoning_tokens: int) -> None:
        if reasoning:
            self.reasoning.append(reasoning, reasoning_tokens)
        if answer:
            self.start_answer()
            self.answer.append_stream(answer)

    def start_answer(self) -> None:
        if self.answer_started:
            return
        self.answer_started = True
        self.reasoning.finish()
        if self.reasoning.tokens == 0 and not self.reasoning.text():
            self.reasoning.setVisible(False)
        elif self.collapse_when_answering:
            self.reasoning.set_expanded(False)
        self.answer.setVisible(True)

    def finish(self, answer: str, reasoning_tokens: int, figures: str, stopped: bool) -> None:
        self.reasoning.finish(stopped=stopped and not self.answer_started, tokens=reasoning_tokens)
        if answer:
            self.answer_started = True
            self.answer.setVisible(True)
            self.answer.render_source(answer)
        if not self.reasoning.text() and reasoning_tokens == 0:
            self.reasoning.setVisible(False)
        self.figures.setText(figures)
        self._footer.setVisible(True)
        has_answer = bool(answer)
        self.copy_button.setEnabled(has_answer)
        self.copy_latex_button.setEnabled(has_answer)

    def fail(self, message: str) -> None:
        self.reasoning.finish(stopped=True)
        self.error.setText(message)
        self.error.setVisible(True)
        self._footer.setVisible(True)
        self.copy_button.setEnabled(bool(self.answer.source))
        self.copy_latex_button.setEnabled(bool(self.answer.source))

    # -- a consensus reply --------------------------------------------------------------------

    def start_consensus(self, requested: int) -> ConsensusView:
        """Lanes for `requested` samples; the reasoning pane follows one (the first, or the one
        clicked) while they run, and the answer shows once the vote is in."""
        view = ConsensusView(requested, self)
        view.sample_selected.connect(self._show_sample)
        self._layout.insertWidget(1, view)
        self.consensus = view
        return view

    def consensus_progress(self, progress: tuple[SampleProgress, ...]) -> None:
        view = self.consensus
        if view is None:
            return
        view.update_samples(progress)
        followed = next((p for p in progress if p.index == view.selected), None)
        if followed is not None and followed.reasoning:
            self.reasoning.append(followed.reasoning, followed.reasoning_tokens)

    def finish_consensus(
        self,
        samples: tuple[SampleRecord, ...] | list[SampleRecord],
        vote: VoteRecord | None,
        figures: str,
        stopped: bool,
    ) -> None:
        """The vote is in (or the reply came from the history): show the winner, keep all."""
        view = self.consensus or self.start_consensus(max(len(samples), 1))
        self.reasoning.finish(stopped=stopped)
        view.finish(samples, vote)
        self.figures.setText(figures)
        self._footer.setVisible(True)
        self.continue_button.setVisible(False)
        if samples:
            view.select(view.winner if view.winner is not None else 0)
        else:
            self.reasoning.setVisible(False)

    def _show_sample(self, index: int) -> None:
        view = self.consensus
        assert view is not None
        sample = view.samples[index]
        if view.running:
            # Follow this sample from here on: its text so far, then what it writes next.
            self.reasoning.replace_text(sample.reasoning_text(), sample.reasoning_tokens)
            return
        record = sample.record
        reasoning = record.reasoning if record is not None else ""
        answer = record.answer if record is not None else ""
        stopped = record is None or record.finish_reason != "stop"
        self.reasoning.setVisible(True)
        self.reasoning.restore(reasoning, sample.reasoning_tokens, None, stopped and not answer)
        self.answer_started = bool(answer)
        self.answer.setVisible(bool(answer))
        self.answer.render_source(answer)
        self.copy_button.setEnabled(bool(answer))
        self.copy_latex_button.setEnabled(bool(answer))

    def set_regenerate_visible(self, visible: bool) -> None:
        self.regenerate_button.setVisible(visible)

    def set_continuable(self, continuable: bool) -> None:
        """Offer Continue: the reply ended before the model finished it (stopped, failed…).
        A consensus is never continued: it is several replies and a vote."""
        self.continue_button.setVisible(continuable and self.consensus is None)

    # -- clipboard ----------------------------------------------------------------------------

    def copy_text(self) -> None:
        self.answer.copy_to_clipboard()

    def copy_latex(self) -> None:
        QGuiApplication.clipboard().setText(self.answer.source)


class Notice(QLabel):
    """A line in the transcript that is not a message (older turns left out, errors)."""

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("notice")
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setText(text)


# -- the transcript -------------------------------------------------------------------------------


class ChatView(QScrollArea):
    """The transcript; with no messages it shows the welcome view (`welcome`) instead."""

    edit_submitted = Signal(int, str)
    regenerate_requested = Signal()
    continue_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._content = QWidget(self)
        self._content.setObjectName("transcript")
        self._layout = QVBoxLayout(self._content)
        self._layout.setContentsMargins(12, 12, 12, 12)
        self._layout.setSpacing(10)
        self.welcome = WelcomeView(self._content)
        self._layout.addWidget(self.welcome)
        self._layout.addStretch(1)
        self.setWidget(self._content)
        self.follower = TailFollower(self.verticalScrollBar())

    def items(self) -> list[QWidget]:
        """The transcript's messages and notices, in order (not the welcome view)."""
        widgets = (self._layout.itemAt(i).widget() for i in range(self._layout.count()))
        return [widget for widget in widgets if widget is not None and widget is not self.welcome]

    def user_messages(self) -> list[UserMessage]:
        return [w for w in self.items() if isinstance(w, UserMessage)]

    def assistant_messages(self) -> list[AssistantMessage]:
        return [w for w in self.items() if isinstance(w, AssistantMessage)]

    def clear(self) -> None:
        for widget in self.items():
            self.remove(widget)
        self.follower.at_bottom = True
        self.welcome.setVisible(True)

    def add_user(self, text: str, message_id: int) -> UserMessage:
        message = UserMessage(text, message_id, self._content)
        message.edit_submitted.connect(self.edit_submitted)
        self._add(message)
        return message

    def add_assistant(
        self, message_id: int, collapse_when_answering: bool = True
    ) -> AssistantMessage:
        for earlier in self.assistant_messages():
            earlier.set_regenerate_visible(False)
            earlier.set_continuable(False)  # only the last reply can be continued
        message = AssistantMessage(message_id, collapse_when_answering, self._content)
        message.regenerate_requested.connect(self.regenerate_requested)
        message.continue_requested.connect(self.continue_requested)
        self._add(message)
        return message

    def add_notice(self, text: str) -> Notice:
        notice = Notice(text, self._content)
        self._add(notice)
        return notice

    def remove(self, widget: QWidget) -> None:
        self._layout.removeWidget(widget)
        widget.hide()  # gone from view now, not only once the event loop deletes it
        widget.deleteLater()
        self.welcome.setVisible(not self.items())

    def _add(self, widget: QWidget) -> None:
        # Before the trailing stretch, so messages stack from the top; the follower scrolls.
        self.welcome.setVisible(False)
        self._layout.insertWidget(self._layout.count() - 1, widget)
