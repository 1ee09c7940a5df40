"""The chat window: sidebar, transcript, context meter, composer and status bar.

It owns the conversation flow (send, stop, answer now, regenerate, edit and resend, consensus)
and keeps the history durable: a reply is recorded before it streams, saved every ~0.5 s while it
streams, and finished with a status whatever ends it. The model runs in `EngineClient`'s thread;
this class only posts requests and reacts to the worker's queued signals.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QInputDialog,
    QLabel,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.engine.chat_template import with_eval_instruction
from fathom_desktop.engine.types import (
    ChatMessage,
    ContextTrimmed,
    FinishReason,
    LoadOptions,
    LoadReport,
    Phase,
    PhaseChanged,
)
from fathom_desktop.gui.banner import BANNER_STYLE, Banner, BannerKind
from fathom_desktop.gui.chat_view import AssistantMessage, ChatView
from fathom_desktop.gui.composer import Composer, ComposerMode
from fathom_desktop.gui.context_meter import ContextMeter, ContextUsage
from fathom_desktop.gui.reasoning_pane import LIVE_FIGURES_INTERVAL_S
from fathom_desktop.gui.replies import (
    earlier_messages_text,
    figures_text,
    restore_reply,
    stats_record,
)
from fathom_desktop.gui.sidebar import ConversationSidebar
from fathom_desktop.gui.worker import (
    EngineClient,
    EngineFactory,
    GenerationDone,
    GenerationFailed,
    GenerationRequest,
    StreamBatch,
    StreamNotice,
)
from fathom_desktop.history import History, HistoryError, MessageStatus, StoredMessage
from fathom_desktop.render.math import start_warm_up
from fathom_desktop.settings import SettingsStore, SettingsValueError, SystemPreset

log = logging.getLogger(__name__)

# Settings that only take effect by loading the model again.
LOAD_KEYS = frozenset(
    {"model_path", "n_gpu_layers", "n_ctx", "kv_cache_type", "flash_attn", "n_threads"}
)
TITLE_LENGTH = 60
DEFAULT_CONSENSUS_SAMPLES = 5

STYLE_SHEET = (
    """
#userMessage { background: palette(alternate-base); border-radius: 8px; }
#assistantMessage { border-bottom: 1px solid palette(midlight); }
QTextEdit#answerText { background: transparent; }
#roleLabel { font-weight: bold; }
#reasoningPane { border: 1px solid palette(mid); border-radius: 6px; }
#reasoningText { color: palette(placeholder-text); }
#notice, #figures { color: palette(placeholder-text); }
#errorText { color: #c62828; }
"""
    + BANNER_STYLE
)


class ChatState(StrEnum):
    NO_MODEL = "no model"
    LOADING = "loading"
    READY = "ready"
    GENERATING = "generating"


@dataclass
class _Turn:
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


class MainWindow(QMainWindow):
    def __init__(
        self,
        engine_factory: EngineFactory,
        store: SettingsStore,
        history: History,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Fathom Desktop")
        self.resize(1100, 760)
        self.setStyleSheet(STYLE_SHEET)
        self.store = store
        self.history = history
        self.state = ChatState.NO_MODEL
        self.report: LoadReport | None = None
        self.conversation_id: int | None = None
        self._turn: _Turn | None = None
        self._last_good_load: LoadOptions | None = None
        self._loading: LoadOptions | None = None
        self._closed = False

        self.client = EngineClient(engine_factory, self)
        worker = self.client.worker
        # Queued: these are emitted in the model thread and the handlers touch widgets.
        queued = Qt.ConnectionType.QueuedConnection
        worker.load_finished.connect(self._on_loaded, queued)
        worker.load_failed.connect(self._on_load_failed, queued)
        worker.batch.connect(self._on_batch, queued)
        worker.notice.connect(self._on_notice, queued)
        worker.generation_done.connect(self._on_done, queued)
        worker.generation_failed.connect(self._on_failed, queued)

        start_warm_up()
        self._build_widgets()
        self._build_menus()
        self.refresh_conversations()
        conversations = self.sidebar.ids()
        if conversations:
            self.open_conversation(conversations[0])
        if history.recovered_interrupted:
            count = history.recovered_interrupted
            self.show_banner(
                f"{count} repl{'y' if count == 1 else 'ies'} had not finished when the app last"
                " closed;"
                " what was saved is kept and marked interrupted."
            )
        self._set_state(ChatState.NO_MODEL)

    # -- construction -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.sidebar = ConversationSidebar(self)
        self.sidebar.new_requested.connect(self.new_conversation)
        self.sidebar.conversation_selected.connect(self.open_conversation)
        self.sidebar.search_changed.connect(lambda _text: self.refresh_conversations())
        self.sidebar.rename_requested.connect(self.rename_conversation)
        self.sidebar.delete_requested.connect(self.delete_conversation)

        self.banner = Banner(self)

        self.chat = ChatView(self)
        self.chat.edit_submitted.connect(self.resend_edited)
        self.chat.regenerate_requested.connect(self.regenerate)
        self.meter = ContextMeter(self)
        self.composer = Composer(self)
        self.composer.send_requested.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        self.composer.answer_now_requested.connect(self.answer_now)

        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(4)
        right_layout.addWidget(self.banner)
        right_layout.addWidget(self.chat, 1)
        right_layout.addWidget(self.meter)
        right_layout.addWidget(self.composer)

        splitter = QSplitter(self)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([240, 860])
        self.setCentralWidget(splitter)

        self.model_label = QLabel("No model", self)
        self.quant_label = QLabel(self)
        self.gpu_label = QLabel(self)
        self.speed_label = QLabel(self)
        self.busy = QProgressBar(self)
        self.busy.setRange(0, 0)  # indeterminate: llama.cpp reports no load progress we can use
        self.busy.setMaximumWidth(140)
        self.busy.setVisible(False)
        status = self.statusBar()
        # Permanent: a plain status-bar widget is hidden while a message ("Loading…") shows.
        status.addPermanentWidget(self.busy)
        for label in (self.model_label, self.quant_label, self.gpu_label, self.speed_label):
            label.setTextFormat(Qt.TextFormat.PlainText)
            status.addPermanentWidget(label)

    def _build_menus(self) -> None:
        def action(menu, text: str, slot, shortcut: QKeySequence | str | None = None) -> QAction:
            item = QAction(text, self)
            if shortcut is not None:
                item.setShortcut(QKeySequence(shortcut))
            item.triggered.connect(lambda _checked=False: slot())  # drop "checked"
            menu.addAction(item)
            return item

        file_menu = self.menuBar().addMenu("&File")
        action(file_menu, "&New chat", self.new_conversation, QKeySequence.StandardKey.New)
        action(file_menu, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        file_menu.addSeparator()
        action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat_menu = self.menuBar().addMenu("&Chat")
        self.stop_action = action(chat_menu, "&Stop", self.stop, "Esc")
        self.answer_now_action = action(
            chat_menu, "&Answer now", self.answer_now, "Ctrl+Shift+Return"
        )
        self.regenerate_action = action(
            chat_menu, "&Regenerate last answer", self.regenerate, "Ctrl+R"
        )
        self.consensus_action = action(chat_menu, "&Consensus ×K…", self._ask_consensus)
        chat_menu.addSeparator()
        action(chat_menu, "&Copy answer", self._copy_last(lambda m: m.copy_text()), "Ctrl+Shift+C")
        action(chat_menu, "Copy answer as &LaTeX", self._copy_last(lambda m: m.copy_latex()))
        action(chat_menu, "Copy &reasoning", self._copy_last(lambda m: m.reasoning.copy()))
        help_menu = self.menuBar().addMenu("&Help")
        action(help_menu, "&About Fathom Desktop", self.show_about)

    def show_about(self) -> None:
        from fathom_desktop.gui.about import show_about

        show_about(self)

    def _copy_last(self, copy):
        def run() -> None:
            messages = self.chat.assistant_messages()
            if messages:
                copy(messages[-1])

        return run

    # -- state --------------------------------------------------------------------------------

    def _set_state(self, state: ChatState) -> None:
        self.state = state
        mode = {
            ChatState.NO_MODEL: ComposerMode.UNAVAILABLE,
            ChatState.LOADING: ComposerMode.UNAVAILABLE,
            ChatState.READY: ComposerMode.READY,
            ChatState.GENERATING: ComposerMode.GENERATING,
        }[state]
        if (
            state is ChatState.GENERATING
            and self._turn is not None
            and self._turn.answer_started_at is None
        ):
            mode = ComposerMode.THINKING if self._turn.reasoning_tokens else ComposerMode.GENERATING
        self.composer.set_mode(mode)
        idle = state is ChatState.READY
        self.stop_action.setEnabled(state is ChatState.GENERATING)
        self.answer_now_action.setEnabled(state is ChatState.GENERATING)
        self.regenerate_action.setEnabled(idle and self._last_user_message() is not None)
        self.consensus_action.setEnabled(idle)
        for message in self.chat.user_messages():
            message.set_editable(idle)
        for message in self.chat.assistant_messages():
            message.regenerate_button.setEnabled(idle)

    def show_banner(self, text: str, kind: BannerKind = BannerKind.PROBLEM) -> None:
        self.banner.show_message(text, kind)

    def hide_banner(self) -> None:
        self.banner.hide()

    def banner_text(self) -> str:
        return self.banner.text()

    # -- the model ----------------------------------------------------------------------------

    def load_model(self, options: LoadOptions | None = None) -> None:
        """Load the model the settings name (or `options`), in the model thread."""
        if options is None:
            # With no model configured (the demo, or --model for one run) a settings change
            # reloads the model that is in use rather than leaving the window without one.
            in_use = self._last_good_load.model_path if self._last_good_load else None
            try:
                options = self.store.load_options(None if self.store.get("model_path") else in_use)
            except SettingsValueError as error:
                self.show_banner(f"{error.reason} Choose a GGUF file in File › Settings.")
                self._set_state(ChatState.NO_MODEL)
                return
        if self._turn is not None:
            self.client.cancel()
        self._loading = options
        self.busy.setVisible(True)
        self.busy.setFormat("")
        self.statusBar().showMessage(f"Loading {options.model_path.name}…")
        self.model_label.setText(options.model_path.name)
        self._set_state(ChatState.LOADING)
        self.client.load(options)

    def _on_loaded(self, report: LoadReport) -> None:
        if self._closed:
            return
        self.report = report
        self._last_good_load = self._loading
        self._loading = None
        self.busy.setVisible(False)
        self.statusBar().showMessage(f"Loaded {report.model_path.name}", 5000)
        self.model_label.setText(report.model_path.name)
        self.quant_label.setText(report.file_type)
        if report.n_gpu_layers <= 0 or not report.gpu_offload_supported:
            gpu = "CPU only"
        else:
            gpu = (
                f"GPU {min(report.n_gpu_layers, report.n_layers + 1)}/{report.n_layers + 1} layers"
            )
        self.gpu_label.setText(gpu)
        # Keep the shown conversation's last turn on the meter; only the window size may change.
        self.meter.set_usage(dataclasses.replace(self.meter.usage, n_ctx=report.n_ctx))
        if report.notes:
            self.show_banner(" ".join(report.notes), BannerKind.NOTE)
        self._set_state(ChatState.GENERATING if self._turn is not None else ChatState.READY)

    def _on_load_failed(self, message: str) -> None:
        if self._closed:
            return
        self.busy.setVisible(False)
        self.statusBar().clearMessage()
        self.report = None
        failed, previous = self._loading, self._last_good_load
        self._loading = None
        self.model_label.setText("No model")
        self.quant_label.clear()
        self.gpu_label.clear()
        if previous is not None and failed is not None and failed != previous:
            self.show_banner(f"{message} Going back to {previous.model_path.name}.")
            self._revert_model_settings(previous)
            self.load_model(previous)
            return
        self.show_banner(f"{message} Choose another model or setting in File › Settings.")
        self._set_state(ChatState.NO_MODEL)

    def _revert_model_settings(self, previous: LoadOptions) -> None:
        try:
            self.store.update(
                {
                    "model_path": str(previous.model_path),
                    "n_gpu_layers": previous.n_gpu_layers,
                    "n_ctx": previous.n_ctx,
                    "kv_cache_type": previous.kv_cache_type,
                    "flash_attn": previous.flash_attn,
                    "n_threads": previous.n_threads,
                }
            )
            self.store.save()
        except (SettingsValueError, OSError) as error:
            log.warning("could not restore the previous model settings: %s", error)

    def open_settings(self) -> None:
        from fathom_desktop.gui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.store, self)
        dialog.applied.connect(self.apply_settings)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def apply_settings(self, changed_keys: list[str]) -> None:
        """React to saved settings: reload the model (keeping the conversation), retheme."""
        if "theme" in changed_keys:
            from fathom_desktop.gui.settings_dialog import apply_theme

            apply_theme(str(self.store.get("theme")))
        if LOAD_KEYS.intersection(changed_keys):
            self.load_model()

    # -- conversations ------------------------------------------------------------------------

    def refresh_conversations(self) -> None:
        try:
            conversations = self.history.list_conversations(self.sidebar.search_text() or None)
        except HistoryError as error:
            self.show_banner(str(error))
            return
        self.sidebar.set_conversations(conversations, self.conversation_id)

    def new_conversation(self) -> None:
        if self.state is ChatState.GENERATING:
            return
        self.conversation_id = None
        self.chat.clear()
        self.meter.set_usage(ContextUsage(n_ctx=self._n_ctx()))
        self.setWindowTitle("Fathom Desktop")
        self.sidebar.list.clearSelection()
        self.composer.edit.setFocus()
        self._set_state(self.state)

    def open_conversation(self, conversation_id: int) -> None:
        if self.state is ChatState.GENERATING and conversation_id != self.conversation_id:
            self.statusBar().showMessage("Stop the reply first to switch conversations.", 4000)
            self.refresh_conversations()
            return
        try:
            summary = self.history.conversation(conversation_id)
            stored = self.history.messages(conversation_id)
        except HistoryError as error:
            self.show_banner(str(error))
            return
        self.conversation_id = conversation_id
        self.setWindowTitle(f"{summary.title} — Fathom Desktop")
        self._show_messages(stored)
        item = self.sidebar.item_for(conversation_id)
        if item is not None:
            self.sidebar.list.setCurrentItem(item)
        self._set_state(self.state)

    def _show_messages(self, stored: list[StoredMessage]) -> None:
        self.chat.clear()
        usage = ContextUsage(n_ctx=self._n_ctx())
        for message in stored:
            if message.role == "user":
                self.chat.add_user(message.content, message.id)
            elif message.role == "assistant":
                widget = self.chat.add_assistant(message.id)
                restore_reply(widget, message)
                stats = message.stats or {}
                usage = ContextUsage(
                    n_ctx=self._n_ctx(),
                    prompt=int(stats.get("prompt_tokens", 0)),
                    reasoning=int(stats.get("reasoning_tokens", 0)),
                    answer=int(stats.get("answer_tokens", 0)),
                )
        self.meter.set_usage(usage)

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        try:
            self.history.rename_conversation(conversation_id, title)
        except HistoryError as error:
            self.show_banner(str(error))
        if conversation_id == self.conversation_id:
            self.setWindowTitle(f"{title} — Fathom Desktop")
        self.refresh_conversations()

    def delete_conversation(self, conversation_id: int) -> None:
        if self._turn is not None and self._turn.conversation_id == conversation_id:
            self.statusBar().showMessage("Stop the reply before deleting its conversation.", 4000)
            return
        try:
            self.history.delete_conversation(conversation_id)
        except HistoryError as error:
            self.show_banner(str(error))
        if conversation_id == self.conversation_id:
            self.new_conversation()
        self.refresh_conversations()

    # -- a turn -------------------------------------------------------------------------------

    def send(self, text: str, samples: int = 1) -> bool:
        """Add `text` as your message and start the reply; False if nothing was started."""
        text = text.strip()
        if not text or self.state is not ChatState.READY:
            return False
        try:
            if self.conversation_id is None:
                title = " ".join(text.split())[:TITLE_LENGTH]
                self.conversation_id = self.history.create_conversation(title)
                self.setWindowTitle(f"{title} — Fathom Desktop")
            message_id = self.history.add_user_message(self.conversation_id, text)
        except HistoryError as error:
            self.show_banner(str(error))
            return False
        self.chat.add_user(text, message_id)
        self.refresh_conversations()
        return self._start_turn(samples)

    def stop(self) -> None:
        if self._turn is not None:
            self.client.cancel()
            self.statusBar().showMessage("Stopping…")

    def answer_now(self) -> None:
        if self._turn is not None and self._turn.answer_started_at is None:
            self.client.answer_now()
            self._turn.widget.reasoning.answered_early = True
            self.statusBar().showMessage("Asking for the answer now…", 3000)

    def regenerate(self, samples: int = 1) -> bool:
        """Replace the last reply with a new one (its user message stays)."""
        if self.state is not ChatState.READY or self.conversation_id is None:
            return False
        try:
            stored = self.history.messages(self.conversation_id)
            last_user = next((m for m in reversed(stored) if m.role == "user"), None)
            if last_user is None:
                return False
            later = [m for m in stored if m.id > last_user.id]
            if later:
                self.history.delete_from_message(later[0].id)
            stored = self.history.messages(self.conversation_id)
        except HistoryError as error:
            self.show_banner(str(error))
            return False
        self._show_messages(stored)
        return self._start_turn(samples)

    def resend_edited(self, message_id: int, text: str) -> bool:
        """Your edited message replaces the old one; everything after it is dropped and redone."""
        if self.state is not ChatState.READY or self.conversation_id is None:
            return False
        try:
            self.history.edit_user_message(message_id, text)
            stored = self.history.messages(self.conversation_id)
        except HistoryError as error:
            self.show_banner(str(error))
            return False
        self._show_messages(stored)
        self.refresh_conversations()
        return self._start_turn()

    def consensus(self, samples: int) -> bool:
        """Sample `samples` replies to the composer's text (or the last message) and vote."""
        text = self.composer.text().strip()
        if text:
            self.composer.edit.clear()
            return self.send(text, samples)
        return self.regenerate(samples)

    def _ask_consensus(self) -> None:
        samples, accepted = QInputDialog.getInt(
            self, "Consensus", "Sample this many answers and vote on the boxed result:",
            DEFAULT_CONSENSUS_SAMPLES, 2, 64,
        )  # fmt: skip
        if accepted:
            self.consensus(samples)

    def _last_user_message(self) -> int | None:
        users = self.chat.user_messages()
        return users[-1].message_id if users else None

    def _engine_messages(self, stored: list[StoredMessage]) -> list[ChatMessage]:
        messages: list[ChatMessage] = []
        # R1-family models take Fathom's evaluation instruction in the user's turn, with no
        # system prompt (as they were evaluated); a custom prompt goes in as a system message.
        eval_preset = self.store.get("system_preset") == SystemPreset.FATHOM_EVAL
        system = "" if eval_preset else self.store.system_prompt()
        if system:
            messages.append(ChatMessage("system", system))
        for message in stored:
            if message.role == "assistant" and not message.content.strip():
                continue  # a reply that never reached its answer adds nothing the model can use
            if message.role in ("user", "assistant"):
                messages.append(message.to_chat_message())
        return with_eval_instruction(messages) if eval_preset else messages

    def _start_turn(self, samples: int = 1) -> bool:
        if self.conversation_id is None or self.report is None:
            return False
        sampling = self.store.sampling()
        try:
            stored = self.history.messages(self.conversation_id)
            message_id = self.history.begin_assistant_message(
                self.conversation_id, self.report.model_path.name, self.report.file_type, sampling
            )
        except HistoryError as error:
            self.show_banner(str(error))
            return False
        collapse = bool(self.store.get("collapse_reasoning_when_answering"))
        widget = self.chat.add_assistant(message_id, collapse)
        history = self.history

        def save_partial(reasoning: str, answer: str) -> None:
            history.save_partial(message_id, reasoning, answer)  # runs in the model thread

        request = self.client.generate(
            self._engine_messages(stored), sampling, samples, save_partial
        )
        self._turn = _Turn(
            request=request,
            conversation_id=self.conversation_id,
            message_id=message_id,
            widget=widget,
        )
        self.meter.set_usage(ContextUsage(n_ctx=self._n_ctx()))
        self.speed_label.clear()
        self.statusBar().clearMessage()
        self._set_state(ChatState.GENERATING)
        return True

    # -- the worker's reports -------------------------------------------------------------------

    def _current(self, request_id: int) -> _Turn | None:
        turn = self._turn
        if self._closed or turn is None or turn.request.request_id != request_id:
            return None
        return turn

    def _on_batch(self, batch: StreamBatch) -> None:
        turn = self._current(batch.request_id)
        if turn is None:
            return
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
            self._set_state(ChatState.GENERATING)
        elif (
            batch.reasoning
            and self.composer.mode is ComposerMode.GENERATING
            and turn.answer_started_at is None
        ):
            self._set_state(ChatState.GENERATING)
        now = time.monotonic()
        if now - turn.figures_shown_at >= LIVE_FIGURES_INTERVAL_S:
            turn.figures_shown_at = now
            self.meter.set_usage(
                ContextUsage(
                    self._n_ctx(), turn.prompt_tokens, turn.reasoning_tokens, turn.answer_tokens
                )
            )
            if now - turn.started > 0.5:
                speed = (turn.reasoning_tokens + turn.answer_tokens) / (now - turn.started)
                self.speed_label.setText(f"{speed:.1f} tok/s")

    def _next_sample(self, turn: _Turn, index: int) -> None:
        turn.sample_index = index
        turn.reasoning.append(f"\n\n── sample {index + 1} of {turn.request.samples} ──\n\n")
        turn.widget.append(turn.reasoning[-1], "", turn.widget.reasoning.tokens)

    def _on_notice(self, notice: StreamNotice) -> None:
        turn = self._current(notice.request_id)
        if turn is None:
            return
        event = notice.event
        if isinstance(event, ContextTrimmed):
            turn.dropped_messages = event.dropped_messages
            self.chat.add_notice(
                f"{earlier_messages_text(event.dropped_messages)}"
                " left out so that this turn fits the context window."
            )
            return
        assert isinstance(event, PhaseChanged)
        if event.prompt_tokens:
            turn.prompt_tokens = event.prompt_tokens
            self.meter.set_usage(
                ContextUsage(
                    self._n_ctx(), turn.prompt_tokens, turn.reasoning_tokens, turn.answer_tokens
                )
            )
        if event.phase is Phase.REASONING:
            turn.widget.reasoning.start_thinking()
            if turn.answer_started_at is None:
                self.composer.set_mode(ComposerMode.THINKING)
        elif event.phase is Phase.ANSWER and turn.request.samples == 1:
            turn.widget.start_answer()
            turn.answer_started_at = turn.answer_started_at or time.monotonic()
            self.composer.set_mode(ComposerMode.GENERATING)

    def _on_done(self, done: GenerationDone) -> None:
        turn = self._current(done.request_id)
        if turn is None:
            return
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
        self.meter.set_usage(
            ContextUsage(
                self._n_ctx(), stats.prompt_tokens, stats.reasoning_tokens, stats.answer_tokens
            )
        )
        self.speed_label.setText(f"{stats.decode_tokens_per_s:.1f} tok/s")
        self.statusBar().showMessage("Stopped." if stopped else "Done.", 3000)

    def _on_failed(self, failed: GenerationFailed) -> None:
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
        self, turn: _Turn, reasoning: str, answer: str, stats: dict, status: MessageStatus
    ) -> None:
        self._turn = None
        try:
            self.history.finish_assistant_message(turn.message_id, reasoning, answer, stats, status)
        except HistoryError as error:
            self.show_banner(str(error))
        if self.state is ChatState.GENERATING:
            self._set_state(ChatState.READY)
        else:
            self._set_state(self.state)
        self.refresh_conversations()

    def _n_ctx(self) -> int:
        if self.report is not None:
            return self.report.n_ctx
        return int(self.store.get("n_ctx"))  # type: ignore[arg-type]

    # -- closing ------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop any reply (saved as stopped), close the engine in its thread, join the thread."""
        if self._closed:
            return
        self._closed = True
        turn = self._turn
        if turn is not None:
            self.client.cancel()
            self._turn = None
            try:
                self.history.finish_assistant_message(
                    turn.message_id,
                    "".join(turn.reasoning),
                    "".join(turn.answer),
                    {"finish_reason": FinishReason.CANCELLED.value},
                    MessageStatus.STOPPED,
                )
            except HistoryError as error:
                log.warning("could not save the stopped reply: %s", error)
        self.client.close()
