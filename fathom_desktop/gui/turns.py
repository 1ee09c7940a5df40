"""One streaming turn of the chat: starting a reply, steering it, and recording how it ended.

`TurnController` is the window's half of a generation. It starts a turn (send, regenerate, edit
and resend, consensus), records the reply in the history before it streams, hands the model
thread a callback that saves it every ~0.5 s, appends each batch the worker reports to the reply's
widget, and finishes the reply with a status whatever ends it. The window owns one controller and
delegates to it; the controller reaches the widgets through the window, and only on the GUI thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QInputDialog

from fathom_desktop.engine.chat_template import with_eval_instruction
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    FinishReason,
    Phase,
    PhaseChanged,
)
from fathom_desktop.gui.chat_state import ChatState
from fathom_desktop.gui.chat_view import AssistantMessage
from fathom_desktop.gui.composer import ComposerMode
from fathom_desktop.gui.context_meter import ContextUsage
from fathom_desktop.gui.reasoning_pane import LIVE_FIGURES_INTERVAL_S
from fathom_desktop.gui.replies import earlier_messages_text, figures_text, stats_record
from fathom_desktop.gui.worker import (
    GenerationDone,
    GenerationFailed,
    GenerationRequest,
    StreamBatch,
    StreamNotice,
)
from fathom_desktop.history import HistoryError, MessageStatus, StoredMessage
from fathom_desktop.settings import SystemPreset

if TYPE_CHECKING:
    from fathom_desktop.gui.main_window import MainWindow

log = logging.getLogger(__name__)

TITLE_LENGTH = 60
DEFAULT_CONSENSUS_SAMPLES = 5


@dataclass
class Turn:
    """The reply being generated."""

    request: GenerationRequest
    conversation_id: int
    message_id: int
    widget: AssistantMessage
    reasoning: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    sample_index: int = 0
    dropped_messages: int = 0
    started: float = field(default_factory=time.monotonic)
    answer_started_at: float | None = None
    figures_shown_at: float = 0.0


class TurnController(QObject):
    """Starts, steers and finishes the window's one reply at a time (`turn`, None when idle)."""

    def __init__(self, window: MainWindow) -> None:
        # A child of the window, so the worker's queued reports run in the GUI thread and stop
        # arriving once the window is gone.
        super().__init__(window)
        self._window = window
        self._closed = False
        self.turn: Turn | None = None

    # -- starting and steering a turn ----------------------------------------------------------

    def send(self, text: str, samples: int = 1) -> bool:
        """Add `text` as your message and start the reply; False if nothing was started."""
        window = self._window
        text = text.strip()
        if not text or window.state is not ChatState.READY:
            return False
        try:
            if window.conversation_id is None:
                title = " ".join(text.split())[:TITLE_LENGTH]
                window.conversation_id = window.history.create_conversation(title)
                window.setWindowTitle(f"{title} — Fathom Desktop")
            message_id = window.history.add_user_message(window.conversation_id, text)
        except HistoryError as error:
            window.show_banner(str(error))
            return False
        window.chat.add_user(text, message_id)
        window.conversations.refresh()
        return self._start_turn(samples)

    def stop(self) -> None:
        if self.turn is not None:
            self._window.client.cancel()
            self._window.statusBar().showMessage("Stopping…")

    def answer_now(self) -> None:
        if self.turn is not None and self.turn.answer_started_at is None:
            self._window.client.answer_now()
            self.turn.widget.reasoning.answered_early = True
            self._window.statusBar().showMessage("Asking for the answer now…", 3000)

    def regenerate(self, samples: int = 1) -> bool:
        """Replace the last reply with a new one (its user message stays)."""
        window = self._window
        if window.state is not ChatState.READY or window.conversation_id is None:
            return False
        try:
            stored = window.history.messages(window.conversation_id)
            last_user = next((m for m in reversed(stored) if m.role == "user"), None)
            if last_user is None:
                return False
            later = [m for m in stored if m.id > last_user.id]
            if later:
                window.history.delete_from_message(later[0].id)
            stored = window.history.messages(window.conversation_id)
        except HistoryError as error:
            window.show_banner(str(error))
            return False
        window.conversations.show_messages(stored)
        return self._start_turn(samples)

    def resend_edited(self, message_id: int, text: str) -> bool:
        """Your edited message replaces the old one; everything after it is dropped and redone."""
        window = self._window
        if window.state is not ChatState.READY or window.conversation_id is None:
            return False
        try:
            window.history.edit_user_message(message_id, text)
            stored = window.history.messages(window.conversation_id)
        except HistoryError as error:
            window.show_banner(str(error))
            return False
        window.conversations.show_messages(stored)
        window.conversations.refresh()
        return self._start_turn()

    def consensus(self, samples: int) -> bool:
        """Sample `samples` replies to the composer's text (or the last message) and vote."""
        composer = self._window.composer
        text = composer.text().strip()
        if text:
            composer.edit.clear()
            return self.send(text, samples)
        return self.regenerate(samples)

    def ask_consensus(self) -> None:
        samples, accepted = QInputDialog.getInt(
            self._window, "Consensus", "Sample this many answers and vote on the boxed result:",
            DEFAULT_CONSENSUS_SAMPLES, 2, 64,
        )  # fmt: skip
        if accepted:
            self.consensus(samples)

    def last_user_message(self) -> int | None:
        users = self._window.chat.user_messages()
        return users[-1].message_id if users else None

    def _engine_messages(self, stored: list[StoredMessage]) -> list[ChatMessage]:
        store = self._window.store
        messages: list[ChatMessage] = []
        # R1-family models take Fathom's evaluation instruction in the user's turn, with no
        # system prompt (as they were evaluated); a custom prompt goes in as a system message.
        eval_preset = store.get("system_preset") == SystemPreset.FATHOM_EVAL
        system = "" if eval_preset else store.system_prompt()
        if system:
            messages.append(ChatMessage("system", system))
        for message in stored:
            if message.role == "assistant" and not message.content.strip():
                continue  # a reply that never reached its answer adds nothing the model can use
            if message.role in ("user", "assistant"):
                messages.append(message.to_chat_message())
        return with_eval_instruction(messages) if eval_preset else messages

    def _start_turn(self, samples: int = 1) -> bool:
        window = self._window
        conversation_id, report = window.conversation_id, window.report
        if conversation_id is None or report is None:
            return False
        sampling = window.store.sampling()
        history = window.history
        try:
            stored = history.messages(conversation_id)
            message_id = history.begin_assistant_message(
                conversation_id, report.model_path.name, report.file_type, sampling
            )
        except HistoryError as error:
            window.show_banner(str(error))
            return False
        collapse = bool(window.store.get("collapse_reasoning_when_answering"))
        widget = window.chat.add_assistant(message_id, collapse)

        def save_partial(reasoning: str, answer: str) -> None:
            history.save_partial(message_id, reasoning, answer)  # runs in the model thread

        request = window.client.generate(
            self._engine_messages(stored), sampling, samples, save_partial
        )
        self.turn = Turn(
            request=request,
            conversation_id=conversation_id,
            message_id=message_id,
            widget=widget,
        )
        window.meter.set_usage(ContextUsage(n_ctx=window.n_ctx()))
        window.speed_label.clear()
        window.statusBar().clearMessage()
        window.set_state(ChatState.GENERATING)
        return True

    # -- the worker's reports -------------------------------------------------------------------

    def _current(self, request_id: int) -> Turn | None:
        turn = self.turn
        if self._closed or turn is None or turn.request.request_id != request_id:
            return None
        return turn

    def on_batch(self, batch: StreamBatch) -> None:
        turn = self._current(batch.request_id)
        if turn is None:
            return
        window = self._window
        if batch.sample_index != turn.sample_index:
            self._next_sample(turn, batch.sample_index)
        samples = turn.request.samples
        if samples > 1:
            # Consensus: every sample's text goes to the pane; the vote picks the answer shown.
            turn.widget.append(
                batch.reasoning + batch.answer, "", batch.reasoning_tokens + batch.answer_tokens
            )
        else:
            turn.widget.append(batch.reasoning, batch.answer, batch.reasoning_tokens)
        turn.reasoning.append(batch.reasoning)
        turn.answer.append(batch.answer)
        turn.reasoning_tokens = batch.reasoning_tokens
        turn.answer_tokens = batch.answer_tokens
        if batch.answer and turn.answer_started_at is None and samples == 1:
            turn.answer_started_at = time.monotonic()
            window.set_state(ChatState.GENERATING)
        elif (
            batch.reasoning
            and window.composer.mode is ComposerMode.GENERATING
            and turn.answer_started_at is None
        ):
            window.set_state(ChatState.GENERATING)
        now = time.monotonic()
        if now - turn.figures_shown_at >= LIVE_FIGURES_INTERVAL_S:
            turn.figures_shown_at = now
            window.meter.set_usage(
                ContextUsage(
                    window.n_ctx(), turn.prompt_tokens, turn.reasoning_tokens, turn.answer_tokens
                )
            )
            if now - turn.started > 0.5:
                speed = (turn.reasoning_tokens + turn.answer_tokens) / (now - turn.started)
                window.speed_label.setText(f"{speed:.1f} tok/s")

    def _next_sample(self, turn: Turn, index: int) -> None:
        turn.sample_index = index
        turn.reasoning.append(f"\n\n── sample {index + 1} of {turn.request.samples} ──\n\n")
        turn.widget.append(turn.reasoning[-1], "", turn.widget.reasoning.tokens)

    def on_notice(self, notice: StreamNotice) -> None:
        turn = self._current(notice.request_id)
        if turn is None:
            return
        window = self._window
        event = notice.event
        if isinstance(event, ContextTrimmed):
            turn.dropped_messages = event.dropped_messages
            window.chat.add_notice(
                f"{earlier_messages_text(event.dropped_messages)}"
                " left out so that this turn fits the context window."
            )
            return
        assert isinstance(event, PhaseChanged)
        if event.prompt_tokens:
            turn.prompt_tokens = event.prompt_tokens
            window.meter.set_usage(
                ContextUsage(
                    window.n_ctx(), turn.prompt_tokens, turn.reasoning_tokens, turn.answer_tokens
                )
            )
        if event.phase is Phase.REASONING:
            turn.widget.reasoning.start_thinking()
            if turn.answer_started_at is None:
                window.composer.set_mode(ComposerMode.THINKING)
        elif event.phase is Phase.ANSWER and turn.request.samples == 1:
            turn.widget.start_answer()
            turn.answer_started_at = turn.answer_started_at or time.monotonic()
            window.composer.set_mode(ComposerMode.GENERATING)

    def on_done(self, done: GenerationDone) -> None:
        turn = self._current(done.request_id)
        if turn is None:
            return
        window = self._window
        finished = done.finished
        stats = finished.stats
        stopped = stats.finish_reason is FinishReason.CANCELLED
        reasoning_seconds = turn.widget.reasoning.elapsed_s
        record = stats_record(stats, reasoning_seconds, done.consensus)
        figures = figures_text(stats, None, record.get("consensus"))
        if turn.request.samples > 1:
            turn.widget.reasoning.finish(tokens=turn.widget.reasoning.tokens)
            reasoning = "".join(turn.reasoning)
        else:
            reasoning = finished.reasoning
        turn.widget.finish(finished.answer, stats.reasoning_tokens, figures, stopped)
        status = MessageStatus.STOPPED if stopped else MessageStatus.COMPLETE
        self._finish_turn(turn, reasoning, finished.answer, record, status)
        window.meter.set_usage(
            ContextUsage(
                window.n_ctx(), stats.prompt_tokens, stats.reasoning_tokens, stats.answer_tokens
            )
        )
        window.speed_label.setText(f"{stats.decode_tokens_per_s:.1f} tok/s")
        window.statusBar().showMessage("Stopped." if stopped else "Done.", 3000)

    def on_failed(self, failed: GenerationFailed) -> None:
        turn = self._current(failed.request_id)
        if turn is None:
            return
        if failed.answer:
            turn.widget.answer.setVisible(True)
            turn.widget.answer.render_source(failed.answer)
        turn.widget.fail(failed.message)
        reasoning = failed.reasoning or "".join(turn.reasoning)
        self._finish_turn(
            turn, reasoning, failed.answer, {"error": failed.message}, MessageStatus.ERROR
        )

    def _finish_turn(
        self, turn: Turn, reasoning: str, answer: str, stats: dict, status: MessageStatus
    ) -> None:
        window = self._window
        self.turn = None
        try:
            window.history.finish_assistant_message(
                turn.message_id, reasoning, answer, stats, status
            )
        except HistoryError as error:
            window.show_banner(str(error))
        if window.state is ChatState.GENERATING:
            window.set_state(ChatState.READY)
        else:
            window.set_state(window.state)
        window.conversations.refresh()

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Ignore further reports; cancel any reply and save what streamed of it as stopped."""
        self._closed = True
        turn = self.turn
        if turn is None:
            return
        self._window.client.cancel()
        self.turn = None
        try:
            self._window.history.finish_assistant_message(
                turn.message_id,
                "".join(turn.reasoning),
                "".join(turn.answer),
                {"finish_reason": FinishReason.CANCELLED.value},
                MessageStatus.STOPPED,
            )
        except HistoryError as error:
            log.warning("could not save the stopped reply: %s", error)
