"""Help > About: what this copy is (app, llama.cpp backend, Qt) and where it keeps the user's files.

"Copy details" puts the same facts on the clipboard as plain text, for a bug report.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop import paths
from fathom_desktop.versions import Backend, Versions, collect

ICON_SIZE = 64


def detail_rows(versions: Versions) -> list[tuple[str, str]]:
    if versions.backend is Backend.UNAVAILABLE:
        backend = f"unavailable: {versions.backend_details}"
    else:
        backend = f"{versions.backend.value} (llama-cpp-python {versions.llama_cpp_python})"
    return [
        ("Version", versions.app),
        ("llama.cpp backend", backend),
        ("Qt", f"{versions.qt} (PySide6 {versions.pyside})"),
        ("Python", versions.python),
        ("Installed as", "package" if versions.packaged else "source checkout"),
        ("Settings", str(paths.settings_file())),
        ("History and models", str(paths.data_dir())),
    ]


def details_text(versions: Versions) -> str:
    lines = [f"{name}: {value}" for name, value in detail_rows(versions)]
    if versions.backend is not Backend.UNAVAILABLE:
        lines.append(f"llama.cpp system info: {versions.backend_details}")
    return "\n".join(lines)


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, versions: Versions | None = None) -> None:
        super().__init__(parent)
        self.versions = versions or collect()
        self.setWindowTitle("About Fathom Desktop")

        icon = QLabel(self)
        icon_file = paths.resources_dir() / "icons" / "fathom-desktop.svg"
        if icon_file.is_file():
            icon.setPixmap(QIcon(str(icon_file)).pixmap(ICON_SIZE, ICON_SIZE))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)

        rows = "".join(
            f"<tr><td><b>{html.escape(name)}</b>&nbsp;&nbsp;</td><td>{html.escape(value)}</td></tr>"
            for name, value in detail_rows(self.versions)
        )
        self.details = QLabel(
            "<h3>Fathom Desktop</h3>"
            "<p>Chat with the Fathom-R1-14B reasoning model on this computer, offline.</p>"
            f"<table>{rows}</table>",
            self,
        )
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.copy_button = QPushButton("Copy details", self)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy_details)
        buttons.rejected.connect(self.reject)

        top = QHBoxLayout()
        top.addWidget(icon)
        top.addWidget(self.details, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(buttons)

    def copy_details(self) -> None:
        QGuiApplication.clipboard().setText(details_text(self.versions))


def show_about(parent: QWidget | None = None) -> AboutDialog:
    """Open the dialog window-modally and return it (the caller need not keep it)."""
    dialog = AboutDialog(parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.open()
    return dialog
