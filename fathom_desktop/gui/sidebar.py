"""The list of conversations: new, search (titles and message text), rename in place, export,
delete."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeyEvent
from PySide6.QtWidgets import (
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.history import ConversationSummary

_ID_ROLE = Qt.ItemDataRole.UserRole
SEARCH_DELAY_MS = 200


class _ConversationList(QListWidget):
    delete_pressed = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() == Qt.Key.Key_Delete and self.currentItem() is not None:
            self.delete_pressed.emit()
            return
        super().keyPressEvent(event)


class ConversationSidebar(QWidget):
    conversation_selected = Signal(int)
    new_requested = Signal()
    search_changed = Signal(str)
    rename_requested = Signal(int, str)
    export_requested = Signal(int)
    delete_requested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.new_button = QPushButton("New chat", self)
        self.new_button.clicked.connect(self.new_requested)
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(lambda: self.search_changed.emit(self.search_text()))
        self.search.textChanged.connect(self._search_timer.start)
        self.list = _ConversationList(self)
        self.list.setObjectName("conversationList")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.list.itemActivated.connect(self._on_activated)
        self.list.itemClicked.connect(self._on_activated)
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.delete_pressed.connect(self._confirm_delete_current)
        self._filling = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 4, 8)
        layout.addWidget(self.new_button)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)

    def search_text(self) -> str:
        return self.search.text().strip()

    def set_conversations(
        self, conversations: Sequence[ConversationSummary], current: int | None
    ) -> None:
        self._filling = True
        try:
            self.list.clear()
            for summary in conversations:
                item = QListWidgetItem(summary.title or "Untitled")
                item.setData(_ID_ROLE, summary.id)
                item.setToolTip(f"{summary.message_count} messages")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                self.list.addItem(item)
                if summary.id == current:
                    self.list.setCurrentItem(item)
        finally:
            self._filling = False

    def ids(self) -> list[int]:
        return [int(self.list.item(row).data(_ID_ROLE)) for row in range(self.list.count())]

    def titles(self) -> list[str]:
        return [self.list.item(row).text() for row in range(self.list.count())]

    def item_for(self, conversation_id: int) -> QListWidgetItem | None:
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(_ID_ROLE) == conversation_id:
                return item
        return None

    def _on_activated(self, item: QListWidgetItem) -> None:
        self.conversation_selected.emit(int(item.data(_ID_ROLE)))

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        title = item.text().strip()
        if title:
            self.rename_requested.emit(int(item.data(_ID_ROLE)), title)

    def _context_menu(self, position: QPoint) -> None:
        item = self.list.itemAt(position)
        if item is None:
            return
        self.context_menu_for(item).exec(self.list.viewport().mapToGlobal(position))

    def context_menu_for(self, item: QListWidgetItem) -> QMenu:
        """What right-clicking a conversation offers: Rename, Export…, Delete…."""
        menu = QMenu(self)
        rename = QAction("Rename", menu)
        rename.triggered.connect(lambda: self.list.editItem(item))
        export = QAction("Export…", menu)
        export.triggered.connect(lambda: self.export_requested.emit(int(item.data(_ID_ROLE))))
        delete = QAction("Delete…", menu)
        delete.triggered.connect(lambda: self._confirm_delete(item))
        menu.addAction(rename)
        menu.addAction(export)
        menu.addAction(delete)
        return menu

    def _confirm_delete_current(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self._confirm_delete(item)

    def _confirm_delete(self, item: QListWidgetItem) -> None:
        answer = QMessageBox.question(
            self,
            "Delete conversation",
            f"Delete “{item.text()}” and all its messages? This cannot be undone.",
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_requested.emit(int(item.data(_ID_ROLE)))
