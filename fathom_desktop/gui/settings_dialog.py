"""The settings dialog, built from the settings table: one editor per row of `SETTINGS`.

Nothing changes until Apply or OK. Then every value is validated together (including the rules
that involve more than one setting and the chosen model's trained context); a refused value keeps
the dialog open with the reason shown, and accepted ones are saved and announced via `applied`.
The model list (gui/ladder_list.py: every model with its whole quantization ladder, beside a
chart of what each level loses) reads the files and asks about the GPU in the background, so
the dialog opens at once however slow the disk; what is not known yet reads "checking…".
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from convert.quantize import basename_of
from fathom_desktop import paths
from fathom_desktop.engine.gguf_check import ModelFileInfo
from fathom_desktop.engine.planner import GpuInfo, offloadable_layers
from fathom_desktop.gui.ladder_list import LadderList
from fathom_desktop.gui.model_list import FitInputs, describe_gpu
from fathom_desktop.gui.quality_chart import QualityChart
from fathom_desktop.gui.remote_settings import OWNED_KEYS, RemoteSettings
from fathom_desktop.model_ladder import is_demo_basename
from fathom_desktop.settings import (
    SETTINGS,
    SETTINGS_BY_KEY,
    Setting,
    SettingGroup,
    SettingsSaveError,
    SettingsStore,
    SettingsValueError,
    SystemPreset,
    Theme,
    defaults,
    describe_preset,
)

MODEL_KEY = "model_path"
ERROR_STYLE = "color: #b00020;"
HELP_STYLE = "color: palette(placeholder-text);"


class _Editor:
    """One setting's widget: reads and writes values in the setting's own type (None included)."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.widget = self._build()

    def _build(self) -> QWidget:
        s = self.setting
        if s.choices:
            box = QComboBox()
            for choice in s.choices:
                box.addItem(s.choice_label(choice), choice)
            return box
        if s.type is bool and s.none_label is not None:
            box = QComboBox()
            for text, value in ((s.none_label, None), ("on", True), ("off", False)):
                box.addItem(text, value)
            return box
        if s.type is bool:
            return QCheckBox()
        if s.type is int:
            spin = QSpinBox()
            low = int(s.minimum if s.minimum is not None else -(2**31) + 1)
            if s.none_label is not None:
                # The value just below the minimum stands for None and reads as its name.
                low -= 1
                spin.setSpecialValueText(s.none_label)
            spin.setRange(low, int(s.maximum if s.maximum is not None else 2**31 - 1))
            spin.setSingleStep(int(s.step or 1))
            spin.setAccelerated(True)
            return spin
        if s.type is float:
            spin = QDoubleSpinBox()
            spin.setDecimals(s.decimals)
            spin.setRange(s.minimum or 0.0, s.maximum if s.maximum is not None else 1e9)
            spin.setSingleStep(s.step or 10.0**-s.decimals)
            return spin
        if s.multiline:
            text = QPlainTextEdit()
            text.setTabChangesFocus(True)
            text.setMinimumHeight(90)
            return text
        return QLineEdit()

    def value(self) -> object:
        w, s = self.widget, self.setting
        if isinstance(w, QComboBox):
            return w.currentData()
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QSpinBox):
            if s.none_label is not None and w.value() == w.minimum():
                return None
            return w.value()
        if isinstance(w, QDoubleSpinBox):
            return round(w.value(), s.decimals)
        if isinstance(w, QPlainTextEdit):
            return w.toPlainText()
        assert isinstance(w, QLineEdit)
        return w.text()

    def set_value(self, value: object) -> None:
        w = self.widget
        if isinstance(w, QComboBox):
            index = w.findData(value)
            w.setCurrentIndex(max(index, 0))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QSpinBox):
            w.setValue(w.minimum() if value is None else int(value))  # type: ignore[arg-type]
        elif isinstance(w, QDoubleSpinBox):
            w.setValue(float(value))  # type: ignore[arg-type]
        elif isinstance(w, QPlainTextEdit):
            w.setPlainText(str(value or ""))
        elif isinstance(w, QLineEdit):
            w.setText(str(value or ""))

    def connect_changed(self, slot: object) -> None:
        w = self.widget
        signal = {
            QComboBox: "currentIndexChanged",
            QCheckBox: "toggled",
            QSpinBox: "valueChanged",
            QDoubleSpinBox: "valueChanged",
            QPlainTextEdit: "textChanged",
            QLineEdit: "textChanged",
        }[type(w)]
        getattr(w, signal).connect(slot)


def _with_help(widget: QWidget, help_text: str) -> QWidget:
    if not help_text or isinstance(widget, QPlainTextEdit):
        return widget
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(widget)
    note = QLabel(help_text)
    note.setWordWrap(True)
    note.setTextFormat(Qt.TextFormat.PlainText)
    note.setStyleSheet(HELP_STYLE)
    layout.addWidget(note, 1)
    return row


class SettingsDialog(QDialog):
    """Edits a SettingsStore; `applied` carries the keys that changed (and were saved)."""

    applied = Signal(list)
    get_fathom_requested = Signal()  # the window opens the Get Fathom-R1-14B flow

    def __init__(
        self,
        store: SettingsStore,
        parent: QWidget | None = None,
        *,
        models_dir: Path | None = None,
        current_model: Path | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(640)
        self.resize(1000, 640)  # the ladder and its chart side by side
        self._store = store
        self._models_dir = models_dir if models_dir is not None else paths.models_dir()
        # The model in use when the settings name none (the demo, or the best level found).
        self._current_model = current_model
        self._extra_models: list[Path] = []
        self._editors: dict[str, _Editor] = {}

        self._tabs = QTabWidget()
        pages: dict[SettingGroup, QFormLayout] = {}
        for group in SettingGroup:
            page = QWidget()
            outer = QVBoxLayout(page)
            if group is SettingGroup.MODEL:
                # Where the model runs; the local picker shows only for a local GGUF.
                self.remote = RemoteSettings(store)
                outer.addWidget(self.remote)
                outer.addWidget(self.remote.local_only(self._build_model_picker()))
            form = QFormLayout()
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
            if group is SettingGroup.MODEL:
                # The load options apply to a local GGUF only.
                load_options = QWidget()
                load_options.setLayout(form)
                form.setContentsMargins(0, 0, 0, 0)
                outer.addWidget(self.remote.local_only(load_options))
                outer.addWidget(self.remote.api_server_box)
            else:
                outer.addLayout(form)
            outer.addStretch(1)
            pages[group] = form
            self._tabs.addTab(page, group.value)
        for setting in SETTINGS:
            if setting.key == MODEL_KEY or setting.key in OWNED_KEYS:
                continue  # edited by the model picker and RemoteSettings
            editor = _Editor(setting)
            editor.widget.setToolTip(setting.help)
            editor.widget.setObjectName(setting.key)
            self._editors[setting.key] = editor
            pages[setting.group].addRow(setting.label, _with_help(editor.widget, setting.help))
            if setting.key == "system_preset":
                self.preset_preview = QLabel()
                self.preset_preview.setWordWrap(True)
                self.preset_preview.setTextFormat(Qt.TextFormat.PlainText)
                pages[setting.group].addRow("", self.preset_preview)

        self.error_label = QLabel()
        self.error_label.setObjectName("error")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        self.error_label.hide()

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Apply
            | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.RestoreDefaults
        )
        self.buttons.clicked.connect(self._on_button)

        layout = QVBoxLayout(self)
        layout.addWidget(self._tabs)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)

        self._load_from_store()
        for key in ("n_ctx", "kv_cache_type", "flash_attn"):
            self._editors[key].connect_changed(self._refresh_fits)
        self._editors["system_preset"].connect_changed(self._sync_system_prompt)
        self._sync_system_prompt()

    # -- the model picker ------------------------------------------------------------------

    def _build_model_picker(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        self.gpu_label = QLabel("GPU: checking…")
        self.gpu_label.setObjectName("gpu")
        self.gpu_label.setTextFormat(Qt.TextFormat.PlainText)
        self.model_list = LadderList()
        self.model_list.setMinimumHeight(280)
        self.quality_chart = QualityChart()
        self.model_list.ladder_changed.connect(self._show_chart)
        self.model_list.notice.connect(self._show_notice)
        self.model_list.gpu_checked.connect(self._show_gpu)
        self.model_list.scanned.connect(self._show_manifest_warning)
        self.model_list.file_added.connect(self._file_added)
        self.model_list.file_refused.connect(self._show_error)
        self.model_list.model_selected.connect(self._show_layer_count)
        self.model_list.facts_checked.connect(self._show_layer_count)
        self.model_list.scanned.connect(self._show_layer_count)
        self.model_list.check_gpu()
        self.manifest_label = QLabel()
        self.manifest_label.setWordWrap(True)
        self.manifest_label.setTextFormat(Qt.TextFormat.PlainText)
        self.manifest_label.hide()
        folder = QLabel(f"Models folder: {self._models_dir}")
        folder.setTextFormat(Qt.TextFormat.PlainText)
        folder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        browse = QPushButton("Add a GGUF file…")
        browse.clicked.connect(self._browse_model)
        self.get_fathom_button = QPushButton("Get Fathom-R1-14B…")
        self.get_fathom_button.setToolTip(
            "Download, convert, make and measure the level that suits this computer, and load it"
        )
        self.get_fathom_button.clicked.connect(self.get_fathom_requested)
        row = QHBoxLayout()
        row.addWidget(folder, 1)
        row.addWidget(browse)
        row.addWidget(self.get_fathom_button)
        self.notice_label = QLabel()
        self.notice_label.setObjectName("notice")
        self.notice_label.setWordWrap(True)
        self.notice_label.setTextFormat(Qt.TextFormat.PlainText)
        self.notice_label.hide()
        ladder = QHBoxLayout()
        ladder.addWidget(self.model_list, 5)
        ladder.addWidget(self.quality_chart, 3)
        layout.addWidget(QLabel("Model and quantization level"))
        layout.addWidget(self.gpu_label)
        layout.addLayout(ladder, 1)
        layout.addWidget(self.notice_label)
        layout.addWidget(self.manifest_label)
        layout.addLayout(row)
        return box

    def _populate_models(self, selected: Path | None) -> None:
        selected = selected or self._current_model
        self.model_list.scan(self._models_dir, [selected, *self._extra_models], selected)
        self._refresh_fits()

    def _show_gpu(self, gpu: GpuInfo | None) -> None:
        self.gpu_label.setText(describe_gpu(gpu))

    def _show_chart(self) -> None:
        group = self.model_list.chart_group()
        title = f"{group.title}: KLD (log) by size" if group else ""
        self.quality_chart.set_points(self.model_list.chart_points(), title)
        gpu = self.model_list.gpu()
        usable = gpu is not None and gpu.problem is None
        self.quality_chart.set_vram(gpu.free_bytes if usable and gpu else None)

    def _show_notice(self, text: str) -> None:
        self.notice_label.setText(text)
        self.notice_label.setVisible(bool(text))

    def _show_layer_count(self, *_args: object) -> None:
        """Read "20 / 49 layers": the GPU layers editor counts as the status bar and badges do."""
        selected = self.model_list.selected_path()
        facts = self.model_list.facts(selected) if selected is not None else None
        spin = self._editors["n_gpu_layers"].widget
        assert isinstance(spin, QSpinBox)
        if isinstance(facts, ModelFileInfo):
            spin.setSuffix(f" / {offloadable_layers(facts.n_layers)} layers")
        else:
            spin.setSuffix("")

    def _show_manifest_warning(self, warning: str) -> None:
        self.manifest_label.setVisible(bool(warning))
        self.manifest_label.setText(f"manifest.json ignored: {warning}" if warning else "")

    def _refresh_fits(self) -> None:
        n_ctx = int(self._editors["n_ctx"].value())  # type: ignore[arg-type]
        kv = str(self._editors["kv_cache_type"].value())
        # Auto means on wherever llama.cpp has it, which is every build the app ships.
        flash_attn = self._editors["flash_attn"].value() is not False
        self.model_list.set_fit_inputs(FitInputs(n_ctx, kv, flash_attn))

    def _browse_model(self) -> None:
        name, _ = QFileDialog.getOpenFileName(
            self, "Choose a GGUF model", str(self._models_dir), "GGUF models (*.gguf)"
        )
        if name:
            self.add_model_file(Path(name))

    def add_model_file(self, path: Path) -> None:
        """Offer a file from outside the models folder, checked in the background: it is listed
        and selected when usable, or refused with its reason."""
        current = self._store.get(MODEL_KEY)
        extra = [Path(str(current)) if current else None, *self._extra_models]
        self.model_list.add_file(path, self._models_dir, extra)

    def _file_added(self, path: Path) -> None:
        self._extra_models.append(path)
        self._clear_error()

    # -- values ----------------------------------------------------------------------------

    def _load_from_store(self) -> None:
        for key, editor in self._editors.items():
            editor.set_value(self._store.get(key))
        model = self._store.get(MODEL_KEY)
        self._populate_models(Path(str(model)) if model else None)

    def _sync_system_prompt(self) -> None:
        preset = str(self._editors["system_preset"].value())
        self._editors["system_prompt"].widget.setEnabled(preset == SystemPreset.CUSTOM.value)
        self.preset_preview.setText(describe_preset(preset))

    def editor(self, key: str) -> QWidget:
        """The widget that edits `key` (for tests and for focusing a refused value)."""
        return self._editors[key].widget

    def values(self) -> dict[str, object]:
        """What the dialog currently shows, in the settings' own types."""
        values = {key: editor.value() for key, editor in self._editors.items()}
        selected = self.model_list.selected_path()
        current = self._store.get(MODEL_KEY)
        entry = self.model_list.entry_for(selected) if selected is not None else None
        in_use = current or (str(self._current_model) if self._current_model else None)
        if selected is None or (in_use and entry is not None and entry.is_file(str(in_use))):
            # The same file under the name the settings already use (or the model already in
            # use when they name none): not a change, no reload.
            values[MODEL_KEY] = current
        else:
            values[MODEL_KEY] = str(selected)
        values.update(self.remote.values())
        return values

    def restore_defaults(self) -> None:
        """Show the defaults (the model stays); nothing is applied until Apply or OK."""
        for key, value in defaults().items():
            if key in self._editors:
                self._editors[key].set_value(value)
        self.remote.restore_defaults()
        self._clear_error()

    def apply(self) -> bool:
        """Validate, store and save what the dialog shows; False (reason shown) if refused."""
        values = self.values()
        try:
            self._check_against_model(values)
            self.remote.check()
            changed = self._store.update(values)
        except SettingsValueError as error:
            self._show_error(error.reason, error.key)
            return False
        # The API keys go to the keyring, never to the settings file.
        keys_changed, key_problem = self.remote.save_keys()
        changed += keys_changed
        try:
            self._store.save()
        except SettingsSaveError as error:
            self._show_error(f"{error} The new settings apply until the app is closed.")
            if changed:
                self.applied.emit(changed)
            return False
        if changed:
            self.applied.emit(changed)
        if key_problem:  # the dialog stays open so that this is read; OK again closes it
            self._show_error(key_problem)
            return False
        self._clear_error()
        return True

    def _check_against_model(self, values: dict[str, object]) -> None:
        model = values.get(MODEL_KEY)
        if not model or values.get("model_source") == "server":
            return
        path = Path(str(model))
        facts = self.model_list.facts(path)
        if facts is None:
            # Its header is still being read (the list says "checking…"); never wait for it here.
            raise SettingsValueError(
                MODEL_KEY, f"Still checking {path.name}; apply again in a moment."
            )
        if isinstance(facts, str):
            if model != self._store.get(MODEL_KEY):
                raise SettingsValueError(MODEL_KEY, facts)
            return  # the current model went missing; the window reports that when it loads
        if is_demo_basename(basename_of(path)):
            # The demo's levels run as the demo starts: the engine caps the context to its
            # 4,096 tokens and says so, so that switching levels works as on Fathom.
            return
        limit = facts.n_ctx_train
        n_ctx = values["n_ctx"]
        if isinstance(n_ctx, int) and n_ctx > limit:
            raise SettingsValueError(
                "n_ctx",
                f"{path.name} was trained for at most {limit} tokens of context; "
                f"choose {limit} or less (not {n_ctx}).",
            )

    # -- feedback --------------------------------------------------------------------------

    def _show_error(self, reason: str, key: str | None = None) -> None:
        self.error_label.setText(reason)
        self.error_label.show()
        if key is None:
            return
        if key == MODEL_KEY:
            self._tabs.setCurrentIndex(list(SettingGroup).index(SettingGroup.MODEL))
            return
        setting = SETTINGS_BY_KEY.get(key)
        if setting is not None and key in self._editors:
            self._tabs.setCurrentIndex(list(SettingGroup).index(setting.group))
            self._editors[key].widget.setFocus()

    def _clear_error(self) -> None:
        self.error_label.clear()
        self.error_label.hide()

    def error_text(self) -> str:
        return self.error_label.text() if not self.error_label.isHidden() else ""

    def _on_button(self, button: QAbstractButton) -> None:
        role = self.buttons.standardButton(button)
        if role == QDialogButtonBox.StandardButton.Ok:
            if self.apply():
                self.accept()
        elif role == QDialogButtonBox.StandardButton.Apply:
            self.apply()
        elif role == QDialogButtonBox.StandardButton.RestoreDefaults:
            self.restore_defaults()
        else:
            self.reject()


_platform_look: tuple[str, QPalette] | None = None


def _dark_palette() -> QPalette:
    palette = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#202124",
        QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#17181a",
        QPalette.ColorRole.AlternateBase: "#26272b",
        QPalette.ColorRole.ToolTipBase: "#303134",
        QPalette.ColorRole.ToolTipText: "#e8eaed",
        QPalette.ColorRole.PlaceholderText: "#9aa0a6",
        QPalette.ColorRole.Text: "#e8eaed",
        QPalette.ColorRole.Button: "#2d2e31",
        QPalette.ColorRole.ButtonText: "#e8eaed",
        QPalette.ColorRole.BrightText: "#ff8a80",
        QPalette.ColorRole.Link: "#8ab4f8",
        QPalette.ColorRole.Highlight: "#3d6fb4",
        QPalette.ColorRole.HighlightedText: "#ffffff",
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6f7378"))
    return palette


def apply_theme(theme: str) -> None:
    """Follow the platform's light or dark look, or force one.

    Qt's colour-scheme hint does the job where the platform theme supports it; elsewhere (many
    Linux desktops, the offscreen platform) a forced theme uses the Fusion style with its own
    palette, and "system" puts back the look the app started with.
    """
    global _platform_look
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    if _platform_look is None:
        _platform_look = (app.style().name(), app.palette())
    scheme = {
        Theme.LIGHT.value: Qt.ColorScheme.Light,
        Theme.DARK.value: Qt.ColorScheme.Dark,
    }.get(theme, Qt.ColorScheme.Unknown)
    app.styleHints().setColorScheme(scheme)
    if scheme == Qt.ColorScheme.Unknown:
        style_name, palette = _platform_look
        app.setStyle(style_name)
        app.setPalette(palette)
    elif app.styleHints().colorScheme() != scheme:
        app.setStyle("Fusion")
        dark = scheme == Qt.ColorScheme.Dark
        app.setPalette(_dark_palette() if dark else app.style().standardPalette())
