"""The one-line message strip above the chat: problems in red, notes in the muted text colour,
and the buttons that act on a problem (Reload after the engine failed).

A note reports something the app adjusted for the user and that needs no action (the context
capped at the model's trained length, fewer layers on the GPU after running out of memory);
painting those like a failure would teach users to ignore the strip when it matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QToolButton, QWidget

# A button's text and what it does; the banner hides itself when one is clicked.
BannerAction = tuple[str, Callable[[], object]]


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
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(12, 6, 12, 0)
        self._layout.addWidget(self.label, 1)
        self._layout.addWidget(self.close_button)
        self.kind = BannerKind.PROBLEM
        self.buttons: list[QPushButton] = []
        self.setVisible(False)

    def show_message(
        self,
        text: str,
        kind: BannerKind = BannerKind.PROBLEM,
        actions: Sequence[BannerAction] = (),
    ) -> None:
        self.kind = kind
        for button in self.buttons:
            self._layout.removeWidget(button)
            button.deleteLater()
        self.buttons = []
        for label, run in actions:
            button = QPushButton(label, self)
            button.clicked.connect(lambda _checked=False, run=run: (self.hide(), run()))
            self._layout.insertWidget(self._layout.count() - 1, button)
            self.buttons.append(button)
        self.label.setText(text)
        self.label.setProperty("kind", kind.value)
        # Style sheets read dynamic properties when a widget is polished, not when they change.
        self.label.style().unpolish(self.label)
        self.label.style().polish(self.label)
        self.setVisible(True)

    def text(self) -> str:
        """What the user sees in the strip; empty while it is hidden."""
        return "" if self.isHidden() else self.label.text()
