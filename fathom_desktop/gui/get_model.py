"""File › Open or download a model…: the first-run dialog's ways to a GGUF (open one, convert a
checkpoint folder, download from the Hub), offered at any time; the chosen file becomes the
model setting and is loaded."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWidget

from fathom_desktop.settings import SettingsSaveError, SettingsStore


def open_model_dialog(
    parent: QWidget, store: SettingsStore, load: Callable[[], None], warn: Callable[[str], None]
) -> QWidget:
    """Show the dialog (non-modal); on a choice, save it as the model and call `load`."""
    from fathom_desktop.gui.first_run import FirstRunDialog

    dialog = FirstRunDialog(parent)
    dialog.setWindowTitle("Open or download a model")
    dialog.quit_button.setText("Cancel")  # it closes this dialog, not the app
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

    def chosen() -> None:
        if dialog.chosen_path is None:
            return
        store.set("model_path", str(dialog.chosen_path))
        try:
            store.save()
        except SettingsSaveError as error:  # the model is still used for this run
            warn(str(error))
        load()

    dialog.accepted.connect(chosen)
    dialog.open()
    return dialog
