"""The chat window: sidebar, transcript, context meter, composer and status bar.

It builds the widgets and menus, loads the model the settings name, and renders what its
`ChatSession` reports: the state (what the composer and the Chat menu allow), the conversation,
the reply as it streams and how it ended, and an engine that failed. What the user does goes to
the session; the window keeps no conversation state of its own beyond the reply widget it is
filling.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QTextCursor
from PySide6.QtWidgets import (
    QInputDialog,
    QLabel,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.engine.planner import layers_on_gpu
from fathom_desktop.engine.remote_choice import EngineChoice, RemoteLoadOptions
from fathom_desktop.engine.types import LoadOptions, LoadReport, Phase
from fathom_desktop.gui.banner import BANNER_STYLE, Banner, BannerKind
from fathom_desktop.gui.chat_view import AssistantMessage, ChatView
from fathom_desktop.gui.composer import Composer, ComposerMode
from fathom_desktop.gui.context_meter import ContextMeter, ContextUsage
from fathom_desktop.gui.export_actions import ConversationExporter
from fathom_desktop.gui.local_api import API_KEY_CHANGED, API_SERVER_KEYS, ApiServerControl
from fathom_desktop.gui.reasoning_pane import LIVE_FIGURES_INTERVAL_S
from fathom_desktop.gui.remote_settings import (
    REMOTE_KEY_CHANGED,
    REMOTE_KEYS,
    remote_load_options,
    uses_server,
)
from fathom_desktop.gui.replies import (
    earlier_messages_text,
    figures_text,
    finish_consensus_reply,
    restore_reply,
    stats_from_record,
)
from fathom_desktop.gui.session import ChatSession
from fathom_desktop.gui.session_types import (
    CONTINUABLE,
    ConversationShown,
    EngineFailure,
    ReplyEnded,
    ReplyStarted,
    ReplyText,
    SessionState,
    TokenUsage,
)
from fathom_desktop.gui.sidebar import ConversationSidebar
from fathom_desktop.gui.worker import ConsensusProgress, EngineFactory
from fathom_desktop.history import History, MessageStatus, StoredMessage
from fathom_desktop.render.math import start_warm_up
from fathom_desktop.settings import LOAD_KEYS, SettingsStore, SettingsValueError, load_settings

log = logging.getLogger(__name__)

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
        # The local model or a remote server, shared in turns with the Local API server.
        self.engine_choice = EngineChoice(engine_factory)
        self.session = ChatSession(lambda: self.engine_choice, history, store, self)
        # The reply being filled, and when its live figures last changed (they relayout).
        self._reply: AssistantMessage | None = None
        self._reply_samples = 1
        self._usage_shown_at = 0.0
        self._last_local_load: LoadOptions | None = None  # to come back to from a server
        self._server_note: str | None = None  # "vLLM at …", shown while a server is used

        start_warm_up()
        self._build_widgets()
        self._build_menus()
        session = self.session
        # Direct: the session lives in the GUI thread and reports there.
        session.state_changed.connect(self._show_state)
        session.model_loaded.connect(self._on_loaded)
        session.load_failed.connect(self._on_load_failed)
        session.engine_failed.connect(self._on_engine_failed)
        session.problem.connect(self.show_banner)
        session.status_message.connect(lambda text: self.statusBar().showMessage(text, 4000))
        session.conversation_shown.connect(self._show_conversation)
        session.conversations_changed.connect(self.refresh_sidebar)
        session.user_message_added.connect(
            lambda message_id, text: self.chat.add_user(text, message_id)
        )
        # The composer empties only once the message is in the conversation.
        session.user_message_added.connect(lambda _id, text: self.composer.take_sent(text))
        session.reply_started.connect(self._on_reply_started)
        session.reply_text.connect(self._on_reply_text)
        session.consensus_progress.connect(self._on_consensus_progress)
        session.reply_phase.connect(self._on_reply_phase)
        session.context_trimmed.connect(self._on_context_trimmed)
        session.usage_changed.connect(self._show_usage)
        session.reply_finished.connect(self._on_reply_finished)

        self.refresh_sidebar()
        conversations = self.sidebar.ids()
        if conversations:
            session.open_conversation(conversations[0])
        if history.recovered_interrupted:
            count = history.recovered_interrupted
            self.show_banner(
                f"{count} repl{'y' if count == 1 else 'ies'} had not finished when the app last"
                " closed;"
                " what was saved is kept and marked interrupted."
            )
        self._show_state(session.state)
        self.api_server.apply()  # off unless Settings turned it on

    # -- construction -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.sidebar = ConversationSidebar(self)
        self.sidebar.new_requested.connect(self.session.new_conversation)
        self.sidebar.conversation_selected.connect(self.session.open_conversation)
        self.sidebar.search_changed.connect(lambda _text: self.refresh_sidebar())
        self.sidebar.rename_requested.connect(self._rename)
        self.sidebar.delete_requested.connect(self.session.delete_conversation)
        self.exporter = ConversationExporter(self.session.history, self)
        self.exporter.exported.connect(
            lambda path: self.statusBar().showMessage(f"Exported to {path}", 8000)
        )
        self.exporter.failed.connect(self.show_banner)
        self.sidebar.export_requested.connect(self.exporter.export)

        self.banner = Banner(self)

        self.chat = ChatView(self)
        self.chat.edit_submitted.connect(self.session.resend_edited)
        self.chat.regenerate_requested.connect(lambda: self.session.regenerate())
        self.chat.continue_requested.connect(self.session.continue_reply)
        self.chat.welcome.prompt_chosen.connect(self._put_in_composer)
        self.chat.welcome.get_model_requested.connect(self.open_model_dialog)
        self.chat.welcome.get_fathom_requested.connect(self.open_get_fathom)
        self.meter = ContextMeter(self)
        self.composer = Composer(self)
        self.composer.send_requested.connect(self.session.send)
        self.composer.stop_requested.connect(self.session.stop)
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
        self.api_server = ApiServerControl(self.engine_choice, self.store, self)
        self.api_server.problem.connect(self.show_banner)
        self.api_server.status_message.connect(lambda text: status.showMessage(text, 8000))
        status.addPermanentWidget(self.api_server.label)

    def _build_menus(self) -> None:
        def action(menu, text: str, slot, shortcut: QKeySequence | str | None = None) -> QAction:
            item = QAction(text, self)
            if shortcut is not None:
                item.setShortcut(QKeySequence(shortcut))
            item.triggered.connect(lambda _checked=False: slot())  # drop "checked"
            menu.addAction(item)
            return item

        file_menu = self.menuBar().addMenu("&File")
        action(file_menu, "&New chat", self.session.new_conversation, QKeySequence.StandardKey.New)
        action(
            file_menu, "&Open or download a model…", self.open_model_dialog,
            QKeySequence.StandardKey.Open,
        )  # fmt: skip
        action(file_menu, "&Get Fathom-R1-14B…", self.open_get_fathom)
        self.export_action = action(
            file_menu,
            "&Export conversation…",
            lambda: self.exporter.export(self.session.conversation_id),
        )
        action(file_menu, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        file_menu.addSeparator()
        action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat_menu = self.menuBar().addMenu("&Chat")
        self.stop_action = action(chat_menu, "&Stop", self.session.stop, "Esc")
        self.answer_now_action = action(
            chat_menu, "&Answer now", self.answer_now, "Ctrl+Shift+Return"
        )
        self.regenerate_action = action(
            chat_menu, "&Regenerate last answer", self.session.regenerate, "Ctrl+R"
        )
        self.consensus_action = action(chat_menu, "&Consensus ×K…", self.ask_consensus)
        chat_menu.addSeparator()
        action(chat_menu, "&Copy answer", self._copy_last(lambda m: m.copy_text()), "Ctrl+Shift+C")
        action(chat_menu, "Copy answer as &LaTeX", self._copy_last(lambda m: m.copy_latex()))
        action(chat_menu, "Copy &reasoning", self._copy_last(lambda m: m.reasoning.copy()))
        help_menu = self.menuBar().addMenu("&Help")
        action(help_menu, "&About Fathom Desktop", self.show_about)

    def open_model_dialog(self) -> None:
        from fathom_desktop.gui.get_model import open_model_dialog

        open_model_dialog(self, self.store, self.load_model, self.show_banner)

    def open_get_fathom(self) -> None:
        from fathom_desktop.gui.get_fathom import open_get_fathom

        open_get_fathom(self, self.store, self.load_model, self.show_banner)

    def _put_in_composer(self, text: str) -> None:
        self.composer.set_text(text)
        self.composer.edit.moveCursor(QTextCursor.MoveOperation.End)
        self.composer.edit.setFocus()

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

    def _show_state(self, state: SessionState) -> None:
        """Enable what `state` allows: composer, Chat menu, edit, regenerate and continue."""
        mode = {
            SessionState.NO_MODEL: ComposerMode.UNAVAILABLE,
            SessionState.LOADING: ComposerMode.UNAVAILABLE,
            SessionState.READY: ComposerMode.READY,
            # Sending reloads the model first, so the conversation goes on.
            SessionState.ENGINE_FAILED: ComposerMode.READY,
            SessionState.READING_PROMPT: ComposerMode.GENERATING,
            SessionState.REASONING: ComposerMode.THINKING,
            SessionState.ANSWERING: ComposerMode.GENERATING,
            SessionState.STOPPING: ComposerMode.GENERATING,
        }[state]
        self.composer.set_mode(mode)
        replying = state.replying
        self.stop_action.setEnabled(replying)
        self.answer_now_action.setEnabled(state is SessionState.REASONING)
        self._show_answer_now_support()
        idle = state.takes_messages
        users = self.chat.user_messages()
        self.regenerate_action.setEnabled(idle and bool(users))
        self.consensus_action.setEnabled(idle)
        self.export_action.setEnabled(self.session.conversation_id is not None)
        for message in users:
            message.set_editable(idle)
        for message in self.chat.assistant_messages():
            message.regenerate_button.setEnabled(idle)
            message.continue_button.setEnabled(idle)
        if state is SessionState.LOADING:
            loading = self.session.loading
            self.busy.setVisible(True)
            if loading is not None:
                self.statusBar().showMessage(f"Loading {loading.model_path.name}…")
                self.model_label.setText(loading.model_path.name)
        elif state is SessionState.STOPPING:
            self.statusBar().showMessage("Stopping…")

    def _show_answer_now_support(self) -> None:
        """A server that cannot continue a started reply cannot cut its reasoning short."""
        why = self.engine_choice.answer_now_unsupported_reason
        button = self.composer.answer_now_button
        if why is None:
            button.setToolTip("End the reasoning here and ask for the answer")
            return
        self.answer_now_action.setEnabled(False)
        button.setEnabled(False)
        button.setToolTip(f"Unavailable: {why}.")

    def show_banner(self, text: str, kind: BannerKind = BannerKind.PROBLEM) -> None:
        self.banner.show_message(text, kind)

    def hide_banner(self) -> None:
        self.banner.hide()

    # -- the model ----------------------------------------------------------------------------

    def load_model(self, options: LoadOptions | None = None) -> None:
        """Load the model the settings name (or `options`), in the model thread."""
        if options is None and uses_server(self.store):
            options = remote_load_options(self.store)
        if options is None:
            # With no model configured (the demo, or --model for one run) a settings change
            # reloads the model that is in use rather than leaving the window without one.
            last = self._last_local_load
            in_use = last.model_path if last else None
            try:
                options = self.store.load_options(None if self.store.get("model_path") else in_use)
            except SettingsValueError as error:
                self.show_banner(f"{error.reason} Choose a GGUF file in File › Settings.")
                return
        self.busy.setFormat("")
        self.chat.welcome.show_loading(options.model_path)
        self.session.load(options)

    def _on_loaded(self, report: LoadReport) -> None:
        if not isinstance(self.session.last_good_load, RemoteLoadOptions):
            self._last_local_load = self.session.last_good_load
        self.busy.setVisible(False)
        self.statusBar().showMessage(f"Loaded {report.model_path.name}", 5000)
        self.model_label.setText(report.model_path.name)
        self.quant_label.setText(report.file_type)
        on_gpu = report.n_gpu_layers if report.gpu_offload_supported else 0
        remote = isinstance(self.session.last_good_load, RemoteLoadOptions)
        where = "on the server" if remote else layers_on_gpu(on_gpu, report.n_layers)
        self.gpu_label.setText(where)
        self.chat.welcome.show_model(report)
        # Keep the shown conversation's last turn on the meter; only the window size may change.
        self.meter.set_usage(dataclasses.replace(self.meter.usage, n_ctx=report.n_ctx))
        server_note, self._server_note = self._server_note, None
        if report.notes:
            self.show_banner(" ".join(report.notes), BannerKind.NOTE)
            if remote:
                self._server_note = " ".join(report.notes)
        elif self.banner.buttons or (server_note and self.banner.text() == server_note):
            self.hide_banner()  # the model is back: Reload has nothing left to do

    def _clear_model_labels(self) -> None:
        self.busy.setVisible(False)
        self.statusBar().clearMessage()
        self.model_label.setText("No model")
        self.chat.welcome.show_no_model()
        self.quant_label.clear()
        self.gpu_label.clear()

    def _on_load_failed(self, message: str) -> None:
        self._clear_model_labels()
        failed, previous = self.session.loading, self.session.last_good_load
        if isinstance(failed, RemoteLoadOptions):
            # Nothing to go back to on its own: the user chose the server, so say what it did.
            self.show_banner(
                f"{message} Check the server in File › Settings, or use a local model."
            )
            return
        going_back = previous is not None and not isinstance(previous, RemoteLoadOptions)
        if going_back and failed is not None and failed != previous:
            self.show_banner(f"{message} Going back to {previous.model_path.name}.")
            self._revert_model_settings(previous)
            self.load_model(previous)
            return
        self.show_banner(f"{message} Choose another model or setting in File › Settings.")

    def _on_engine_failed(self, failure: EngineFailure) -> None:
        self._clear_model_labels()
        actions = [("Reload", lambda: self.session.reload())]
        if failure.fewer_gpu_layers is not None:
            layers = failure.fewer_gpu_layers
            actions.append(
                (
                    f"Reload with fewer GPU layers ({layers})",
                    lambda: self.session.reload(fewer_gpu_layers=True),
                )
            )
        self.banner.show_message(failure.message, BannerKind.PROBLEM, actions)

    def _revert_model_settings(self, previous: LoadOptions) -> None:
        try:
            self.store.update(load_settings(previous))
            self.store.save()
        except (SettingsValueError, OSError) as error:
            log.warning("could not restore the previous model settings: %s", error)

    def open_settings(self) -> None:
        from fathom_desktop.gui.settings_dialog import SettingsDialog

        last = self.session.last_good_load
        in_use = last.model_path if last else None
        dialog = SettingsDialog(self.store, self, current_model=in_use)
        dialog.applied.connect(self.apply_settings)
        # Settings is window-modal and would block the flow's dialog: it closes (unapplied) first.
        dialog.get_fathom_requested.connect(lambda: (dialog.reject(), self.open_get_fathom()))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def apply_settings(self, changed_keys: list[str]) -> None:
        """React to saved settings: reload the model (keeping the conversation), retheme."""
        if "theme" in changed_keys:
            from fathom_desktop.gui.settings_dialog import apply_theme

            apply_theme(str(self.store.get("theme")))
        remote_changed = REMOTE_KEYS.union({REMOTE_KEY_CHANGED}).intersection(changed_keys)
        local_changed = LOAD_KEYS.intersection(changed_keys) and not uses_server(self.store)
        if remote_changed or local_changed:
            self.load_model()
        if API_SERVER_KEYS.union({API_KEY_CHANGED}).intersection(changed_keys):
            self.api_server.apply()

    def n_ctx(self) -> int:
        return self.session.n_ctx()

    # -- conversations ------------------------------------------------------------------------

    def refresh_sidebar(self) -> None:
        conversations = self.session.list_conversations(self.sidebar.search_text())
        self.sidebar.set_conversations(conversations, self.session.conversation_id)

    def _rename(self, conversation_id: int, title: str) -> None:
        self.session.rename_conversation(conversation_id, title)
        if conversation_id == self.session.conversation_id:
            self.setWindowTitle(f"{title} — Fathom Desktop")

    def _show_conversation(self, shown: ConversationShown) -> None:
        title = f"{shown.title} — Fathom Desktop" if shown.title else "Fathom Desktop"
        self.setWindowTitle(title)
        self._show_messages(shown.messages)
        if shown.conversation_id is None:
            self.sidebar.list.clearSelection()
            self.composer.edit.setFocus()
        else:
            self.refresh_sidebar()
            item = self.sidebar.item_for(shown.conversation_id)
            if item is not None:
                self.sidebar.list.setCurrentItem(item)
        self._show_state(self.session.state)

    def _show_messages(self, stored: tuple[StoredMessage, ...]) -> None:
        """Show `stored` in the transcript, the meter at its last reply's figures."""
        self.chat.clear()
        usage = ContextUsage(n_ctx=self.n_ctx())
        for message in stored:
            if message.role == "user":
                self.chat.add_user(message.content, message.id)
            elif message.role == "assistant":
                widget = self.chat.add_assistant(message.id)
                restore_reply(widget, message)
                stats = message.stats or {}
                usage = ContextUsage(
                    n_ctx=self.n_ctx(),
                    prompt=int(stats.get("prompt_tokens", 0)),
                    reasoning=int(stats.get("reasoning_tokens", 0)),
                    answer=int(stats.get("answer_tokens", 0)),
                )
        last = stored[-1] if stored else None
        if last is not None and last.role == "assistant":
            self.chat.assistant_messages()[-1].set_continuable(last.status in CONTINUABLE)
        self.meter.set_usage(usage)

    # -- the user's actions on a reply ----------------------------------------------------------

    def answer_now(self) -> None:
        if self.session.answer_now() and self._reply is not None and self._reply_samples == 1:
            self._reply.reasoning.answered_early = True

    def ask_consensus(self) -> None:
        samples, accepted = QInputDialog.getInt(
            self, "Consensus", "Sample this many answers and vote on the boxed result:",
            DEFAULT_CONSENSUS_SAMPLES, 2, 64,
        )  # fmt: skip
        if accepted:
            self.consensus(samples)

    def consensus(self, samples: int) -> bool:
        """Sample `samples` replies to the composer's text (or the last message) and vote."""
        text = self.composer.text().strip()
        parallel = self.store.get("consensus_parallel")  # None: the planner's choice
        if text:
            return self.session.send(text, samples, parallel)
        return self.session.regenerate(samples, parallel)

    # -- the reply as it streams ----------------------------------------------------------------

    def _on_reply_started(self, started: ReplyStarted) -> None:
        if started.replaces is not None:
            for earlier in self.chat.assistant_messages():
                if earlier.message_id == started.replaces:
                    self.chat.remove(earlier)
        collapse = bool(self.store.get("collapse_reasoning_when_answering"))
        widget = self.chat.add_assistant(started.message_id, collapse)
        if started.samples > 1:
            widget.start_consensus(started.samples)
        if started.reasoning:
            widget.reasoning.resume(
                started.reasoning, started.reasoning_tokens, started.reasoning_seconds
            )
        if started.answer:
            widget.start_answer()
            widget.answer.append_stream(started.answer)
        self._reply, self._reply_samples = widget, started.samples
        self._usage_shown_at = 0.0
        self.meter.set_usage(ContextUsage(n_ctx=self.n_ctx()))
        self.speed_label.clear()
        self.statusBar().clearMessage()
        self._show_state(self.session.state)

    def _on_reply_text(self, text: ReplyText) -> None:
        if self._reply is not None:
            self._reply.append(text.reasoning, text.answer, text.reasoning_tokens)

    def _on_consensus_progress(self, progress: ConsensusProgress) -> None:
        if self._reply is not None:
            self._reply.consensus_progress(progress.samples)

    def _on_reply_phase(self, phase: Phase) -> None:
        if self._reply is None:
            return
        if phase is Phase.REASONING:
            self._reply.reasoning.start_thinking()
        elif phase is Phase.ANSWER and self._reply_samples == 1:
            self._reply.start_answer()

    def _on_context_trimmed(self, dropped: int) -> None:
        self.chat.add_notice(
            f"{earlier_messages_text(dropped)} left out so that this turn fits the context window."
        )

    def _show_usage(self, usage: TokenUsage) -> None:
        now = time.monotonic()
        streaming = self.session.turn is not None
        if streaming and now - self._usage_shown_at < LIVE_FIGURES_INTERVAL_S:
            return
        self._usage_shown_at = now
        self.meter.set_usage(
            ContextUsage(self.n_ctx(), usage.prompt, usage.reasoning, usage.answer)
        )
        if usage.tokens_per_s is not None:
            self.speed_label.setText(f"{usage.tokens_per_s:.1f} tok/s")

    def _on_reply_finished(self, ended: ReplyEnded) -> None:
        widget, self._reply = self._reply, None
        if widget is None:
            return
        if self._reply_samples > 1:
            finish_consensus_reply(widget, ended)
        elif ended.status is MessageStatus.ERROR:
            stats = stats_from_record(ended.record)
            if ended.answer:
                widget.answer.setVisible(True)
                widget.answer.render_source(ended.answer)
            widget.reasoning.finish(stopped=True, tokens=stats.reasoning_tokens if stats else None)
            widget.fail(ended.error or "")
            widget.figures.setText(figures_text(stats, ended.status, None))
            if self.engine_choice.remote is not None and ended.error:
                # A server's failure (down, key refused, overloaded) concerns every next message.
                self.show_banner(ended.error)
        else:
            stats = ended.stats
            assert stats is not None
            figures = figures_text(stats, None, None)
            stopped = ended.status is MessageStatus.STOPPED
            widget.finish(ended.answer, stats.reasoning_tokens, figures, stopped)
        widget.set_continuable(ended.status in CONTINUABLE)
        self._show_state(self.session.state)

    # -- closing ------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop any reply (saved as stopped), close the engine in its thread, join the thread."""
        self.api_server.stop()  # before the engine it serves closes
        self.session.close()
