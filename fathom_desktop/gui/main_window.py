"""The chat window: sidebar, transcript, context meter, composer and status bar.

It builds the widgets and menus, loads the model the settings name, and keeps the composer and
actions in step with `ChatState`. The conversation flow lives in the two controllers it owns:
`TurnController` (send, stop, answer now, regenerate, edit and resend, consensus: one streaming
reply, kept durable in the history) and `ConversationController` (the sidebar's conversations).
The window keeps its public methods for them as thin delegates. The model runs in
`EngineClient`'s thread; the window only posts requests and reacts to the worker's queued signals.
"""

from __future__ import annotations

import dataclasses
import logging

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QTextCursor
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QProgressBar,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.engine.planner import layers_on_gpu
from fathom_desktop.engine.types import LoadOptions, LoadReport
from fathom_desktop.gui.banner import BANNER_STYLE, Banner, BannerKind
from fathom_desktop.gui.chat_state import ChatState
from fathom_desktop.gui.chat_view import ChatView
from fathom_desktop.gui.composer import Composer, ComposerMode
from fathom_desktop.gui.context_meter import ContextMeter
from fathom_desktop.gui.conversations import ConversationController
from fathom_desktop.gui.export_actions import ConversationExporter
from fathom_desktop.gui.sidebar import ConversationSidebar
from fathom_desktop.gui.turns import TurnController
from fathom_desktop.gui.worker import EngineClient, EngineFactory, StreamBatch
from fathom_desktop.history import History
from fathom_desktop.render.math import start_warm_up
from fathom_desktop.settings import LOAD_KEYS, SettingsStore, SettingsValueError, load_settings

log = logging.getLogger(__name__)

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
        self.history = history
        self.state = ChatState.NO_MODEL
        self.report: LoadReport | None = None
        self.conversation_id: int | None = None
        self._last_good_load: LoadOptions | None = None
        self._loading: LoadOptions | None = None
        self._closed = False

        self.client = EngineClient(engine_factory, self)
        self.turns = TurnController(self)
        self.conversations = ConversationController(self)
        worker = self.client.worker
        # Queued: these are emitted in the model thread and the handlers touch widgets.
        queued = Qt.ConnectionType.QueuedConnection
        worker.load_finished.connect(self._on_loaded, queued)
        worker.load_failed.connect(self._on_load_failed, queued)
        worker.batch.connect(self._on_batch, queued)
        worker.notice.connect(self.turns.on_notice, queued)
        worker.generation_done.connect(self.turns.on_done, queued)
        worker.generation_failed.connect(self.turns.on_failed, queued)

        start_warm_up()
        self._build_widgets()
        self._build_menus()
        self.conversations.refresh()
        conversations = self.sidebar.ids()
        if conversations:
            self.conversations.open(conversations[0])
        if history.recovered_interrupted:
            count = history.recovered_interrupted
            self.show_banner(
                f"{count} repl{'y' if count == 1 else 'ies'} had not finished when the app last"
                " closed;"
                " what was saved is kept and marked interrupted."
            )
        self.set_state(ChatState.NO_MODEL)

    # -- construction -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        self.sidebar = ConversationSidebar(self)
        self.sidebar.new_requested.connect(self.conversations.new)
        self.sidebar.conversation_selected.connect(self.conversations.open)
        self.sidebar.search_changed.connect(lambda _text: self.conversations.refresh())
        self.sidebar.rename_requested.connect(self.conversations.rename)
        self.sidebar.delete_requested.connect(self.conversations.delete)
        self.exporter = ConversationExporter(self.history, self)
        self.exporter.exported.connect(
            lambda path: self.statusBar().showMessage(f"Exported to {path}", 8000)
        )
        self.exporter.failed.connect(self.show_banner)
        self.sidebar.export_requested.connect(self.exporter.export)

        self.banner = Banner(self)

        self.chat = ChatView(self)
        self.chat.edit_submitted.connect(self.turns.resend_edited)
        self.chat.regenerate_requested.connect(self.turns.regenerate)
        self.chat.welcome.prompt_chosen.connect(self._put_in_composer)
        self.chat.welcome.get_model_requested.connect(self.open_model_dialog)
        self.meter = ContextMeter(self)
        self.composer = Composer(self)
        self.composer.send_requested.connect(self.turns.send)
        self.composer.stop_requested.connect(self.turns.stop)
        self.composer.answer_now_requested.connect(self.turns.answer_now)

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
        action(file_menu, "&New chat", self.conversations.new, QKeySequence.StandardKey.New)
        action(
            file_menu, "&Open or download a model…", self.open_model_dialog,
            QKeySequence.StandardKey.Open,
        )  # fmt: skip
        self.export_action = action(
            file_menu, "&Export conversation…", lambda: self.exporter.export(self.conversation_id)
        )
        action(file_menu, "&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        file_menu.addSeparator()
        action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        chat_menu = self.menuBar().addMenu("&Chat")
        self.stop_action = action(chat_menu, "&Stop", self.turns.stop, "Esc")
        self.answer_now_action = action(
            chat_menu, "&Answer now", self.turns.answer_now, "Ctrl+Shift+Return"
        )
        self.regenerate_action = action(
            chat_menu, "&Regenerate last answer", self.turns.regenerate, "Ctrl+R"
        )
        self.consensus_action = action(chat_menu, "&Consensus ×K…", self.turns.ask_consensus)
        chat_menu.addSeparator()
        action(chat_menu, "&Copy answer", self._copy_last(lambda m: m.copy_text()), "Ctrl+Shift+C")
        action(chat_menu, "Copy answer as &LaTeX", self._copy_last(lambda m: m.copy_latex()))
        action(chat_menu, "Copy &reasoning", self._copy_last(lambda m: m.reasoning.copy()))
        help_menu = self.menuBar().addMenu("&Help")
        action(help_menu, "&About Fathom Desktop", self.show_about)

    def open_model_dialog(self) -> None:
        from fathom_desktop.gui.get_model import open_model_dialog

        open_model_dialog(self, self.store, self.load_model, self.show_banner)

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

    def set_state(self, state: ChatState) -> None:
        """Enter `state` and enable what it allows: composer, Chat menu, edit and regenerate."""
        self.state = state
        turn = self.turns.turn
        mode = {
            ChatState.NO_MODEL: ComposerMode.UNAVAILABLE,
            ChatState.LOADING: ComposerMode.UNAVAILABLE,
            ChatState.READY: ComposerMode.READY,
            ChatState.GENERATING: ComposerMode.GENERATING,
        }[state]
        if state is ChatState.GENERATING and turn is not None and turn.answer_started_at is None:
            mode = ComposerMode.THINKING if turn.reasoning_tokens else ComposerMode.GENERATING
        self.composer.set_mode(mode)
        idle = state is ChatState.READY
        self.stop_action.setEnabled(state is ChatState.GENERATING)
        self.answer_now_action.setEnabled(state is ChatState.GENERATING)
        self.regenerate_action.setEnabled(idle and self.turns.last_user_message() is not None)
        self.consensus_action.setEnabled(idle)
        self.export_action.setEnabled(self.conversation_id is not None)
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
                self.set_state(ChatState.NO_MODEL)
                return
        if self.turns.turn is not None:
            self.client.cancel()
        self._loading = options
        self.busy.setVisible(True)
        self.busy.setFormat("")
        self.statusBar().showMessage(f"Loading {options.model_path.name}…")
        self.model_label.setText(options.model_path.name)
        self.chat.welcome.show_loading(options.model_path)
        self.set_state(ChatState.LOADING)
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
        on_gpu = report.n_gpu_layers if report.gpu_offload_supported else 0
        self.gpu_label.setText(layers_on_gpu(on_gpu, report.n_layers))
        self.chat.welcome.show_model(report)
        # Keep the shown conversation's last turn on the meter; only the window size may change.
        self.meter.set_usage(dataclasses.replace(self.meter.usage, n_ctx=report.n_ctx))
        if report.notes:
            self.show_banner(" ".join(report.notes), BannerKind.NOTE)
        self.set_state(ChatState.GENERATING if self.turns.turn is not None else ChatState.READY)

    def _on_load_failed(self, message: str) -> None:
        if self._closed:
            return
        self.busy.setVisible(False)
        self.statusBar().clearMessage()
        self.report = None
        failed, previous = self._loading, self._last_good_load
        self._loading = None
        self.model_label.setText("No model")
        self.chat.welcome.show_no_model()
        self.quant_label.clear()
        self.gpu_label.clear()
        if previous is not None and failed is not None and failed != previous:
            self.show_banner(f"{message} Going back to {previous.model_path.name}.")
            self._revert_model_settings(previous)
            self.load_model(previous)
            return
        self.show_banner(f"{message} Choose another model or setting in File › Settings.")
        self.set_state(ChatState.NO_MODEL)

    def _revert_model_settings(self, previous: LoadOptions) -> None:
        try:
            self.store.update(load_settings(previous))
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

    def n_ctx(self) -> int:
        """The loaded model's context window, or before one loads the one the settings ask for."""
        if self.report is not None:
            return self.report.n_ctx
        return int(self.store.get("n_ctx"))  # type: ignore[arg-type]

    # -- delegates: the window's API for its conversations and its turn -------------------------

    def refresh_conversations(self) -> None:
        self.conversations.refresh()

    def new_conversation(self) -> None:
        self.conversations.new()

    def open_conversation(self, conversation_id: int) -> None:
        self.conversations.open(conversation_id)

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self.conversations.rename(conversation_id, title)

    def delete_conversation(self, conversation_id: int) -> None:
        self.conversations.delete(conversation_id)

    def send(self, text: str, samples: int = 1) -> bool:
        """Add `text` as your message and start the reply; False if nothing was started."""
        return self.turns.send(text, samples)

    def stop(self) -> None:
        self.turns.stop()

    def answer_now(self) -> None:
        self.turns.answer_now()

    def regenerate(self, samples: int = 1) -> bool:
        return self.turns.regenerate(samples)

    def resend_edited(self, message_id: int, text: str) -> bool:
        return self.turns.resend_edited(message_id, text)

    def consensus(self, samples: int) -> bool:
        return self.turns.consensus(samples)

    def _on_batch(self, batch: StreamBatch) -> None:
        # The worker's batches come through here, not straight to the controller, because
        # bench/ui_stream.py times the GUI thread's share of each batch by overriding this.
        self.turns.on_batch(batch)

    # -- closing ------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop any reply (saved as stopped), close the engine in its thread, join the thread."""
        if self._closed:
            return
        self._closed = True
        self.turns.close()
        self.client.close()
