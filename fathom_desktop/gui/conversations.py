"""The window's conversations: listing them in the sidebar, and opening, renaming and deleting one.

`ConversationController` keeps the sidebar, the transcript and the window title in step with the
history. Which conversation is shown stays the window's `conversation_id`, because a turn starts
one on your first message. While a reply streams, the conversation it belongs to is neither left
nor deleted, so the reply always has somewhere to be saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fathom_desktop.gui.chat_state import ChatState
from fathom_desktop.gui.context_meter import ContextUsage
from fathom_desktop.gui.replies import restore_reply
from fathom_desktop.history import HistoryError, StoredMessage

if TYPE_CHECKING:
    from fathom_desktop.gui.main_window import MainWindow


class ConversationController:
    """Refreshes, starts, opens, renames and deletes the window's conversations."""

    def __init__(self, window: MainWindow) -> None:
        self._window = window

    def refresh(self) -> None:
        window = self._window
        try:
            conversations = window.history.list_conversations(window.sidebar.search_text() or None)
        except HistoryError as error:
            window.show_banner(str(error))
            return
        window.sidebar.set_conversations(conversations, window.conversation_id)

    def new(self) -> None:
        window = self._window
        if window.state is ChatState.GENERATING:
            return
        window.conversation_id = None
        window.chat.clear()
        window.meter.set_usage(ContextUsage(n_ctx=window.n_ctx()))
        window.setWindowTitle("Fathom Desktop")
        window.sidebar.list.clearSelection()
        window.composer.edit.setFocus()
        window.set_state(window.state)

    def open(self, conversation_id: int) -> None:
        window = self._window
        if window.state is ChatState.GENERATING and conversation_id != window.conversation_id:
            window.statusBar().showMessage("Stop the reply first to switch conversations.", 4000)
            self.refresh()
            return
        try:
            summary = window.history.conversation(conversation_id)
            stored = window.history.messages(conversation_id)
        except HistoryError as error:
            window.show_banner(str(error))
            return
        window.conversation_id = conversation_id
        window.setWindowTitle(f"{summary.title} — Fathom Desktop")
        self.show_messages(stored)
        item = window.sidebar.item_for(conversation_id)
        if item is not None:
            window.sidebar.list.setCurrentItem(item)
        window.set_state(window.state)

    def show_messages(self, stored: list[StoredMessage]) -> None:
        """Show `stored` in the transcript, the meter at its last reply's figures."""
        window = self._window
        window.chat.clear()
        usage = ContextUsage(n_ctx=window.n_ctx())
        for message in stored:
            if message.role == "user":
                window.chat.add_user(message.content, message.id)
            elif message.role == "assistant":
                widget = window.chat.add_assistant(message.id)
                restore_reply(widget, message)
                stats = message.stats or {}
                usage = ContextUsage(
                    n_ctx=window.n_ctx(),
                    prompt=int(stats.get("prompt_tokens", 0)),
                    reasoning=int(stats.get("reasoning_tokens", 0)),
                    answer=int(stats.get("answer_tokens", 0)),
                )
        window.meter.set_usage(usage)

    def rename(self, conversation_id: int, title: str) -> None:
        window = self._window
        try:
            window.history.rename_conversation(conversation_id, title)
        except HistoryError as error:
            window.show_banner(str(error))
        if conversation_id == window.conversation_id:
            window.setWindowTitle(f"{title} — Fathom Desktop")
        self.refresh()

    def delete(self, conversation_id: int) -> None:
        window = self._window
        turn = window.turns.turn
        if turn is not None and turn.conversation_id == conversation_id:
            window.statusBar().showMessage("Stop the reply before deleting its conversation.", 4000)
            return
        try:
            window.history.delete_conversation(conversation_id)
        except HistoryError as error:
            window.show_banner(str(error))
        if conversation_id == window.conversation_id:
            self.new()
        self.refresh()
