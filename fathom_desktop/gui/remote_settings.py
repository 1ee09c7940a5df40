"""Settings › Model: where the model runs (a local GGUF or an OpenAI-compatible server), and the
app's own Local API server.

The settings dialog builds its other editors from the settings table; these settings need more
than one editor each can give: the server's models are listed from its `/v1/models` (off the GUI
thread), Test connection reports in one line what it found, and both API keys live in the
operating system's keyring (credentials.py), never in the settings file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop import credentials
from fathom_desktop.engine.remote_choice import RemoteLoadOptions
from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.gui.local_api import API_KEY_CHANGED, API_SERVER_KEYS
from fathom_desktop.settings import (
    SETTINGS_BY_KEY,
    ModelSource,
    SettingsStore,
    SettingsValueError,
    defaults,
)

if TYPE_CHECKING:  # the HTTP client loads only when a server is used
    from fathom_desktop.engine.remote_server import RemoteEndpoint

# Settings that make the window connect again (or load the local model again) when they change.
REMOTE_KEYS = frozenset({"model_source", "server_url", "server_model"})
REMOTE_KEY_CHANGED = "server_api_key"  # reported among the changed settings when only the key did
# The settings this module edits; the dialog builds no editor of its own for them.
OWNED_KEYS = REMOTE_KEYS | API_SERVER_KEYS
HELP_STYLE = "color: palette(placeholder-text);"
FIRST_LISTED = "(the first it lists)"


def uses_server(store: SettingsStore) -> bool:
    return store.get("model_source") == ModelSource.SERVER


def endpoint_from(url: str, model: str | None, api_key: str | None = None) -> RemoteEndpoint:
    from fathom_desktop.engine.remote_server import RemoteEndpoint

    return RemoteEndpoint(url.strip(), api_key=api_key or None, model=model or None)


def remote_load_options(store: SettingsStore) -> RemoteLoadOptions:
    """What the window loads when Settings name a server: its key is read from the keyring when
    connecting, in the model thread."""
    endpoint = endpoint_from(str(store.get("server_url") or ""), _optional(store, "server_model"))
    return RemoteLoadOptions(
        model_path=Path(endpoint.base),
        endpoint=endpoint,
        api_key=lambda: credentials.api_key(credentials.REMOTE_SERVER),
    )


def _optional(store: SettingsStore, key: str) -> str | None:
    value = store.get(key)
    return str(value) if value else None


def _note(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setStyleSheet(HELP_STYLE)
    return label


class RemoteSettings(QWidget):
    """The model's source and the server's details; `api_server_box` is the Local API server's
    part, placed by the dialog further down the page."""

    source_changed = Signal(bool)  # True when a server is chosen

    def __init__(self, store: SettingsStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._store = store
        self._jobs = BackgroundJobs(self)
        self._local_parts: list[QWidget] = []
        # The keys as the keyring holds them (None until read); a change is saved on Apply.
        self._stored_keys: dict[str, str | None] = {}
        self._reading: set[str] = set()  # accounts asked of the keyring (or already read)

        self.source = QComboBox()
        self.source.setObjectName("model_source")
        setting = SETTINGS_BY_KEY["model_source"]
        for choice in setting.choices:
            self.source.addItem(setting.choice_label(choice), choice)
        self.source.setToolTip(setting.help)

        self.server_box = QGroupBox("OpenAI-compatible server")
        self.url = QLineEdit()
        self.url.setObjectName("server_url")
        self.url.setPlaceholderText("http://gpu-box:8000/v1")
        self.model = QComboBox()
        self.model.setObjectName("server_model")
        self.model.setEditable(True)
        self.model.lineEdit().setPlaceholderText(FIRST_LISTED)
        self.server_key = QLineEdit()
        self.server_key.setObjectName("server_api_key")
        self.server_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.server_key.setPlaceholderText("none (kept in the system keyring)")
        self.test_button = QPushButton("Test connection")
        self.test_button.setObjectName("test_connection")
        self.test_button.clicked.connect(self.test_connection)
        self.connection_result = _note()
        self.connection_result.setObjectName("connection_result")
        self.connection_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout(self.server_box)
        form.addRow("URL", self.url)
        form.addRow("Model", self.model)
        form.addRow("API key", self.server_key)
        test_row = QHBoxLayout()
        test_row.addWidget(self.test_button)
        test_row.addStretch(1)
        form.addRow("", test_row)
        form.addRow("", self.connection_result)  # its own row: the line wraps, never clipped

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        source_row = QHBoxLayout()
        source_row.addWidget(QLabel("Chat with"))
        source_row.addWidget(self.source, 1)
        layout.addLayout(source_row)
        layout.addWidget(self.server_box)

        self.api_server_box = self._build_api_server_box()

        self._listed_for: str | None = None  # the URL whose models the list shows
        self.load_from_store()
        self.source.currentIndexChanged.connect(self._source_shown)
        self.url.editingFinished.connect(self._list_models_if_new)
        self.api_enabled.toggled.connect(lambda _on: self._read_keys())
        self._read_keys()

    def _build_api_server_box(self) -> QGroupBox:
        box = QGroupBox("Local API server")
        self.api_enabled = QCheckBox(
            "Serve the loaded model to other programs while the app is open"
        )
        self.api_enabled.setObjectName("api_server_enabled")
        self.api_enabled.setToolTip(
            "fathom-serve's OpenAI-compatible API (/v1/chat/completions, /v1/models) over the "
            "model the window has loaded; the window and the server's clients take turns on it."
        )
        self.api_host = QLineEdit()
        self.api_host.setObjectName("api_server_host")
        self.api_host.setToolTip(SETTINGS_BY_KEY["api_server_host"].help)
        self.api_port = QSpinBox()
        self.api_port.setObjectName("api_server_port")
        port = SETTINGS_BY_KEY["api_server_port"]
        self.api_port.setRange(int(port.minimum or 1), int(port.maximum or 65535))
        self.api_key = QLineEdit()
        self.api_key.setObjectName("api_server_key")
        self.api_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.api_key.setPlaceholderText("none (needed for any address but 127.0.0.1)")
        form = QFormLayout(box)
        form.addRow(self.api_enabled)
        form.addRow("Address", self.api_host)
        form.addRow("Port", self.api_port)
        form.addRow("API key", self.api_key)
        return box

    # -- showing -------------------------------------------------------------------------------

    def local_only(self, widget: QWidget) -> QWidget:
        """Hide `widget` (the local model picker) while a server is chosen."""
        self._local_parts.append(widget)
        widget.setVisible(not self.chooses_server())
        return widget

    def chooses_server(self) -> bool:
        return self.source.currentData() == ModelSource.SERVER

    def _source_shown(self) -> None:
        server = self.chooses_server()
        self.server_box.setVisible(server)
        for widget in self._local_parts:
            widget.setVisible(not server)
        self.source_changed.emit(server)
        if server:
            self._read_keys()
            self._list_models_if_new()

    def load_from_store(self) -> None:
        self._show_values(self._store.as_dict())

    def restore_defaults(self) -> None:
        self._show_values(defaults())

    def _show_values(self, values: dict[str, object]) -> None:
        self.source.setCurrentIndex(max(0, self.source.findData(values["model_source"])))
        self.url.setText(str(values["server_url"] or ""))
        self._set_model_text(str(values["server_model"] or ""))
        self.api_enabled.setChecked(bool(values["api_server_enabled"]))
        self.api_host.setText(str(values["api_server_host"]))
        self.api_port.setValue(int(values["api_server_port"]))  # type: ignore[arg-type]
        self._source_shown()

    def _set_model_text(self, text: str) -> None:
        self.model.setCurrentText(text)

    # -- keys ----------------------------------------------------------------------------------

    def _read_keys(self) -> None:
        """Fill the key fields from the keyring, off the GUI thread (a keyring may be slow or
        ask to be unlocked), and only for the parts in use: a user who never chose a server or
        the API server is never asked for the keyring."""
        accounts = (
            (credentials.REMOTE_SERVER, self.server_key, self.chooses_server()),
            (credentials.LOCAL_API_SERVER, self.api_key, self.api_enabled.isChecked()),
        )
        for account, field, in_use in accounts:
            if not in_use or account in self._reading:
                continue
            self._reading.add(account)
            field.setEnabled(False)

            def shown(key: object, account: str = account, field: QLineEdit = field) -> None:
                self._stored_keys[account] = str(key) if key else None
                if not field.text():
                    field.setText(str(key or ""))
                field.setEnabled(True)

            def failed(_error: BaseException, field: QLineEdit = field) -> None:
                field.setEnabled(True)

            self._jobs.run(lambda account=account: credentials.api_key(account), shown, failed)

    def save_keys(self) -> tuple[list[str], str | None]:
        """Put changed keys in the keyring: (the pseudo-settings that changed, a problem)."""
        changed: list[str] = []
        problem: str | None = None
        for account, field, marker in (
            (credentials.REMOTE_SERVER, self.server_key, REMOTE_KEY_CHANGED),
            (credentials.LOCAL_API_SERVER, self.api_key, API_KEY_CHANGED),
        ):
            if account not in self._stored_keys:
                continue  # not read (not in use) or still being read: nothing to save
            key = field.text().strip() or None
            if key == self._stored_keys[account]:
                continue
            try:
                credentials.set_api_key(account, key)
            except credentials.KeyNotSaved as error:
                problem = str(error)
            self._stored_keys[account] = key
            changed.append(marker)
        return changed, problem

    # -- values --------------------------------------------------------------------------------

    def values(self) -> dict[str, object]:
        return {
            "model_source": self.source.currentData(),
            "server_url": self.url.text().strip(),
            "server_model": self.model.currentText().strip() or None,
            "api_server_enabled": self.api_enabled.isChecked(),
            "api_server_host": self.api_host.text().strip(),
            "api_server_port": self.api_port.value(),
        }

    def check(self) -> None:
        """Refuse what the settings table cannot see: a public API server without a key."""
        if not self.api_enabled.isChecked():
            return
        from fathom_desktop.serve.in_app import ApiServerError, check_address

        try:
            check_address(self.api_host.text().strip(), self.api_key.text().strip() or None)
        except ApiServerError as error:
            raise SettingsValueError("api_server_host", str(error)) from None

    # -- the server ----------------------------------------------------------------------------

    def _endpoint(self) -> RemoteEndpoint:
        return endpoint_from(
            self.url.text(), self.model.currentText().strip(), self.server_key.text().strip()
        )

    def test_connection(self) -> None:
        url = self.url.text().strip()
        if not url:
            self._show_result("Enter the server's URL first.", failed=True)
            return
        self.test_button.setEnabled(False)
        from fathom_desktop.engine.remote_probe import probe

        endpoint = self._endpoint()
        self._show_result(f"Testing {endpoint.base}…")
        self._jobs.run(lambda: probe(endpoint), self._tested, self._test_failed)

    def _tested(self, result: object) -> None:
        from fathom_desktop.engine.remote_probe import ProbeResult

        assert isinstance(result, ProbeResult)
        self.test_button.setEnabled(True)
        self._offer_models(list(result.models))
        self._show_result(result.line())

    def _test_failed(self, error: BaseException) -> None:
        self.test_button.setEnabled(True)
        self._show_result(f"Failed: {error}", failed=True)

    def _show_result(self, text: str, *, failed: bool = False) -> None:
        self.connection_result.setText(text)
        self.connection_result.setStyleSheet("color: #b00020;" if failed else HELP_STYLE)

    def _list_models_if_new(self) -> None:
        """List the server's models when its URL changed (in the background; silent on failure,
        where Test connection says why)."""
        url = self.url.text().strip()
        if not url or not self.chooses_server() or url == self._listed_for:
            return
        from fathom_desktop.engine.remote_probe import list_models

        self._listed_for = url
        endpoint = self._endpoint()
        self._jobs.run(lambda: list_models(endpoint), self._offer_models, lambda _error: None)

    def _offer_models(self, models: object) -> None:
        chosen = self.model.currentText()
        self.model.clear()
        self.model.addItems([str(m) for m in models])  # type: ignore[union-attr]
        self.model.setCurrentText(chosen)
