"""The one-line message strip above the chat: problems in red, notes in the muted text colour.

A note reports something the app adjusted for the user and that needs no action (the context
capped at the model's trained length, fewer layers on the GPU after running out of memory);
painting those like a failure would teach users to ignore the strip when it matters.
"""

from __future__ import annotations

from enum import StrEnum

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QWidget


class BannerKind(StrEnum):
    PROBLEM = "problem"
    NOTE = "note"


# Selected by the label's "kind" property; see Banner.show_message.
BANNER_STYLE = """
#banner[kind="problem"] { color: #c62828; }
#banner[kind="note"] { color: palette(placeholder-text); }
"""


class Banner(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel(self)
        self.label.setObjectName("banner")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.close_button = QToolButton(self)
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 12, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.close_button)
        self.kind = BannerKind.PROBLEM
        self.setVisible(False)

    def show_message(self, text: str, kind: BannerKind = BannerKind.PROBLEM) -> None:
        self.kind = kind
        self.label.setText(text)
        self.label.setProperty("kind", kind.value)
        # Style sheets read dynamic properties when a widget is polished, not when they change.
        self.label.style().unpolish(self.label)
        self.label.style().polish(self.label)
        self.setVisible(True)

    def text(self) -> str:
        """What the user sees in the strip; empty while it is hidden."""
        return "" if self.isHidden() else self.label.text()
