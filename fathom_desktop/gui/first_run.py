"""The first-run dialog: get a model when there is none yet.

Three ways in: open a local GGUF (checked before it is accepted), convert a Hugging Face
checkpoint folder (then quantize it to the levels the user picks), or download a checkpoint from
the Hub (then convert it). Nothing touches the network unless the user presses Download.

The long steps live in first_run_steps and run on a worker thread; outputs appear only when
complete, and Cancel removes anything unfinished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from convert.download import read_source
from convert.quantize import basename_of
from fathom_desktop import paths
from fathom_desktop.engine.errors import ModelFileError
from fathom_desktop.engine.gguf_check import check_model_file
from fathom_desktop.engine.planner import GpuInfo
from fathom_desktop.engine.types import FATHOM_N_CTX
from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.gui.first_run_steps import (
    DEFAULT_REPO,
    UNQUANTIZED_NAME,
    Job,
    JobProgress,
    convert_folder,
    download_folder,
    quant_options,
    quantize_levels,
)
from fathom_desktop.gui.model_list import (
    FitInputs,
    ModelList,
    describe_gpu,
    discover_models,
    human_size,
)
from fathom_desktop.level_choice import Fit, LevelFacts, best_level
from fathom_desktop.model_setup import measured_levels

DEFAULT_QUANT = "Q4_K_M"
ERROR_STYLE = "color: #b00020;"


# -- the dialog ---------------------------------------------------------------------------------


class Page(IntEnum):
    WELCOME = 0
    DOWNLOAD = 1
    WORKING = 2
    QUANTS = 3
    CHOOSE = 4


class FirstRunDialog(QDialog):
    """Returns (via `chosen_path`) the GGUF the app should load, or None if the user gave up."""

    def __init__(self, parent: QWidget | None = None, *, models_dir: Path | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Welcome to Fathom Desktop")
        self.setMinimumWidth(620)
        self.chosen_path: Path | None = None
        self._models_dir = models_dir if models_dir is not None else paths.models_dir()
        # The GPU, the models folder and the files' headers are read in the background (NVML and
        # a slow disk can stall); the dialog says "checking…" until they answer.
        self._gpu: GpuInfo | None = None
        self._background = BackgroundJobs(self)
        self._job: Job | None = None
        self._next: Callable[[object], None] | None = None
        self._unquantized: Path | None = None
        self._source: tuple[str | None, str | None] = (None, None)
        self._config_json: Path | None = None
        self._return_page = Page.WELCOME

        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_welcome())
        self.pages.addWidget(self._build_download())
        self.pages.addWidget(self._build_working())
        self.pages.addWidget(self._build_quants())
        self.pages.addWidget(self._build_choose())
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)
        layout.addWidget(self.error_label)
        self.model_list.gpu_checked.connect(self._gpu_checked)
        self.model_list.set_fit_inputs(FitInputs(FATHOM_N_CTX, "f16", True))
        self.model_list.check_gpu()
        self._show_page(Page.WELCOME)

    @classmethod
    def choose_model(cls, parent: QWidget | None = None) -> Path | None:
        dialog = cls(parent)
        dialog.exec()
        return dialog.chosen_path

    # -- pages ---------------------------------------------------------------------------------

    def _build_welcome(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        intro = QLabel(
            "Fathom Desktop runs Fathom-R1-14B on this computer, offline. It needs the model as a "
            "GGUF file. Pick one of these to get it:"
        )
        intro.setWordWrap(True)
        self.open_button = QPushButton("Open a GGUF file…")
        self.open_button.clicked.connect(self._browse_gguf)
        self.convert_button = QPushButton("Convert a Hugging Face checkpoint folder…")
        self.convert_button.clicked.connect(self._browse_checkpoint)
        self.download_button = QPushButton("Download from Hugging Face…")
        self.download_button.clicked.connect(lambda: self._show_page(Page.DOWNLOAD))
        self.existing_button = QPushButton()
        self.existing_button.clicked.connect(self._choose_existing)
        folder = QLabel(f"Models are kept in {self._models_dir}")
        folder.setTextFormat(Qt.TextFormat.PlainText)
        folder.setWordWrap(True)
        self.gpu_label = QLabel("GPU: checking…")
        self.gpu_label.setTextFormat(Qt.TextFormat.PlainText)
        self.quit_button = QPushButton("Quit")
        self.quit_button.clicked.connect(self.reject)
        layout.addWidget(intro)
        for button in (
            self.existing_button,
            self.open_button,
            self.convert_button,
            self.download_button,
        ):
            button.setMinimumHeight(36)
            layout.addWidget(button)
        layout.addWidget(self.gpu_label)
        layout.addWidget(folder)
        layout.addStretch(1)
        layout.addWidget(self.quit_button, alignment=Qt.AlignmentFlag.AlignRight)
        return page

    def _build_download(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        note = QLabel(
            "This downloads the model's safetensors checkpoint (about 30 GB for Fathom-R1-14B) "
            "from huggingface.co, then converts it. An interrupted download resumes where it "
            "stopped."
        )
        note.setWordWrap(True)
        self.repo_edit = QLineEdit(DEFAULT_REPO)
        start = QPushButton("Download")
        start.clicked.connect(self.start_download)
        back = QPushButton("Back")
        back.clicked.connect(lambda: self._show_page(Page.WELCOME))
        row = QHBoxLayout()
        row.addWidget(back)
        row.addStretch(1)
        row.addWidget(start)
        layout.addWidget(note)
        layout.addWidget(QLabel("Repository:"))
        layout.addWidget(self.repo_edit)
        layout.addStretch(1)
        layout.addLayout(row)
        return page

    def _build_working(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.step_label = QLabel()
        self.step_label.setTextFormat(Qt.TextFormat.PlainText)
        self.progress_bar = QProgressBar()
        self.detail_label = QLabel()
        self.detail_label.setTextFormat(Qt.TextFormat.PlainText)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_job)
        layout.addWidget(self.step_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.detail_label)
        layout.addStretch(1)
        layout.addWidget(self.cancel_button, alignment=Qt.AlignmentFlag.AlignRight)
        return page

    def _build_quants(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        intro = QLabel(
            "Choose the quantization levels to make. Smaller levels fit smaller GPUs; larger "
            "ones keep more of the model's quality. Sizes and fits are estimates at a "
            f"{FATHOM_N_CTX:,}-token context."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.quant_boxes: dict[str, QCheckBox] = {}
        self.quant_grid = QGridLayout()
        self.quant_grid.setHorizontalSpacing(16)
        self.quant_grid.setColumnStretch(3, 1)
        layout.addLayout(self.quant_grid)
        # One line: which level suits this GPU, and why (level_choice.best_level).
        self.recommend_label = QLabel()
        self.recommend_label.setTextFormat(Qt.TextFormat.PlainText)
        self.recommend_label.setWordWrap(True)
        layout.addWidget(self.recommend_label)
        self.keep_box = QCheckBox(f"Also keep the unquantized {UNQUANTIZED_NAME} file")
        layout.addWidget(self.keep_box)
        start = QPushButton("Quantize")
        start.clicked.connect(self.start_quantize)
        layout.addStretch(1)
        layout.addWidget(start, alignment=Qt.AlignmentFlag.AlignRight)
        return page

    def _build_choose(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.choose_intro = QLabel()
        self.choose_intro.setWordWrap(True)
        self.model_list = ModelList()
        self.model_list.itemDoubleClicked.connect(lambda *_: self._use_selected())
        use = QPushButton("Use this model")
        use.clicked.connect(self._use_selected)
        back = QPushButton("Back")
        back.clicked.connect(lambda: self._show_page(Page.WELCOME))
        row = QHBoxLayout()
        row.addWidget(back)
        row.addStretch(1)
        row.addWidget(use)
        layout.addWidget(self.choose_intro)
        layout.addWidget(self.model_list)
        layout.addLayout(row)
        return page

    def _show_page(self, page: Page) -> None:
        if page is Page.WELCOME:
            self.existing_button.setVisible(False)
            models_dir = self._models_dir
            self._background.run(
                lambda: [e for e in discover_models(models_dir)[0] if e.exists],
                self._show_existing,
            )
        self.pages.setCurrentIndex(int(page))

    def _show_existing(self, found: list) -> None:
        self.existing_button.setVisible(bool(found))
        self.existing_button.setText(
            f"Use a model already in the models folder ({len(found)} found)"
        )

    def _gpu_checked(self, gpu: GpuInfo | None) -> None:
        self._gpu = gpu
        self.gpu_label.setText(describe_gpu(gpu))

    def busy(self) -> bool:
        """Whether the GPU, the folder or a header is still being read in the background."""
        return self._background.pending() > 0 or self.model_list.busy()

    def page(self) -> Page:
        return Page(self.pages.currentIndex())

    def error_text(self) -> str:
        return self.error_label.text() if not self.error_label.isHidden() else ""

    def _show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))

    # -- open a local GGUF ---------------------------------------------------------------------

    def _browse_gguf(self) -> None:
        name, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", str(Path.home()), "GGUF models (*.gguf)"
        )
        if name:
            self.open_gguf(Path(name))

    def open_gguf(self, path: Path) -> None:
        """Accept the dialog with `path` once its header is read and it is a usable model;
        otherwise say why not. The header is read in the background (a slow or network disk
        must not freeze the dialog); `busy()` is true until then."""
        self._show_error("")
        self.open_button.setEnabled(False)
        self._background.run(
            lambda: check_model_file(path),
            lambda _info: self._gguf_checked(path, None),
            lambda error: self._gguf_checked(path, error),
        )

    def _gguf_checked(self, path: Path, error: BaseException | None) -> None:
        self.open_button.setEnabled(True)
        if error is not None:
            reason = str(error) if isinstance(error, ModelFileError) else None
            self._show_error(reason or f"{path.name} cannot be read ({error}).")
            return
        self.chosen_path = path.absolute()
        self.accept()

    def _choose_existing(self) -> None:
        self._offer_models(None, "Models found in the models folder:")

    def _offer_models(self, only: list[Path] | None, intro: str) -> None:
        self.model_list.scan(self._models_dir, only=only, select_first=True)
        self.choose_intro.setText(intro)
        self._show_page(Page.CHOOSE)

    def _use_selected(self) -> None:
        path = self.model_list.selected_path()
        if path is None:
            self._show_error("Select a model first.")
            return
        self.open_gguf(path)

    # -- convert a checkpoint folder -----------------------------------------------------------

    def _browse_checkpoint(self) -> None:
        name = QFileDialog.getExistingDirectory(
            self, "Choose a Hugging Face checkpoint folder", str(Path.home())
        )
        if name:
            self.convert_checkpoint_folder(Path(name))

    def convert_checkpoint_folder(self, folder: Path) -> None:
        source = read_source(folder)
        self._source = (source.repo_id, source.revision) if source else (None, None)
        self._config_json = folder / "config.json"
        models_dir = self._models_dir

        def convert(progress: JobProgress, cancel: threading.Event) -> object:
            made = convert_folder(folder, models_dir, progress, cancel)
            # Earlier measurements of this model's levels inform the recommendation.
            return made, measured_levels(models_dir, basename_of(made))

        self._run(
            f"Converting {folder.name}",
            convert,
            lambda result: self._converted(*result),  # type: ignore[misc]
        )

    def _converted(
        self, result: object, measured: dict[str, tuple[float, float]] | None = None
    ) -> None:
        assert isinstance(result, Path)
        self._unquantized = result
        options = quant_options(self._config_json or Path(), self._gpu)
        measured = measured or {}
        recommendation = best_level(
            [
                LevelFacts(
                    option.name,
                    option.estimated_bytes,
                    Fit.from_label(option.fit),
                    *measured.get(option.name, (None, None)),
                    fit_label=option.fit,
                )
                for option in options
            ]
        )
        recommended = recommendation.level.name if recommendation else DEFAULT_QUANT
        self.recommend_label.setText(
            f"Recommended: {recommendation.reason}" if recommendation else ""
        )
        while self.quant_grid.count():
            item = self.quant_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.quant_boxes.clear()
        for row, option in enumerate(options):
            box = QCheckBox(option.name)
            box.setObjectName(option.name)
            box.setChecked(option.name == recommended)
            self.quant_boxes[option.name] = box
            size = f"≈ {human_size(option.estimated_bytes)}" if option.estimated_bytes else "?"
            self.quant_grid.addWidget(box, row, 0)
            for column, text in enumerate((size, option.fit, option.purpose), start=1):
                label = QLabel(text)
                label.setTextFormat(Qt.TextFormat.PlainText)
                self.quant_grid.addWidget(label, row, column)
        self._show_page(Page.QUANTS)

    def start_quantize(self) -> None:
        chosen = [name for name, box in self.quant_boxes.items() if box.isChecked()]
        keep = self.keep_box.isChecked()
        if not chosen and not keep:
            self._show_error("Choose at least one quantization level, or keep the BF16 file.")
            return
        unquantized, source = self._unquantized, self._source
        assert unquantized is not None
        self._run(
            f"Quantizing {unquantized.name}",
            lambda progress, cancel: quantize_levels(
                unquantized, chosen, keep, source, progress, cancel
            ),
            self._quantized,
        )

    def _quantized(self, result: object) -> None:
        assert isinstance(result, list)
        self._offer_models(result, "Done. Choose the model to start with:")

    # -- download ------------------------------------------------------------------------------

    def start_download(self) -> None:
        repo_id = self.repo_edit.text().strip()
        dest = paths.data_dir() / "checkpoints" / repo_id.replace("/", "--")
        self._run(
            f"Downloading {repo_id}",
            lambda progress, cancel: download_folder(repo_id, dest, progress, cancel),
            lambda folder: self.convert_checkpoint_folder(Path(str(folder))),
        )

    # -- jobs ----------------------------------------------------------------------------------

    def _run(
        self,
        title: str,
        step: Callable[[JobProgress, threading.Event], object],
        then: Callable[[object], None],
    ) -> None:
        if self.page() is not Page.WORKING:
            self._return_page = self.page()
        self._show_error("")
        self.step_label.setText(title)
        self.detail_label.setText("Starting…")
        self.progress_bar.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self._show_page(Page.WORKING)
        job = Job(step)
        self._job, self._next = job, then
        # Queued: the signals are emitted on the job's thread and the slots touch widgets.
        queued = Qt.ConnectionType.QueuedConnection
        job.progress.connect(self._on_progress, queued)
        job.succeeded.connect(self._on_succeeded, queued)
        job.failed.connect(self._on_failed, queued)
        job.cancelled.connect(self._on_cancelled, queued)
        job.start()

    def job_running(self) -> bool:
        return self._job is not None

    def _finish_job(self) -> None:
        if self._job is not None:
            self._job.thread.wait()
            self._job = None

    @Slot(str, int, int, str)
    def _on_progress(self, step: str, done: int, total: int, message: str) -> None:
        # The title above the bar already names a one-step job (a download): say it once.
        step = "" if step == self.step_label.text() else step
        if total > 0:
            # QProgressBar holds an int; permille keeps 30 GB totals in range.
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * min(done, total) / total))
            amount = f"{human_size(done)} of {human_size(total)}"
            detail = f"{step}: {amount}" if step else amount
        else:
            self.progress_bar.setRange(0, 0)
            detail = step
        self.detail_label.setText(f"{detail}  {message}".strip())

    @Slot(object)
    def _on_succeeded(self, result: object) -> None:
        self._finish_job()
        then, self._next = self._next, None
        if then is not None:
            then(result)

    @Slot(str)
    def _on_failed(self, reason: str) -> None:
        self._finish_job()
        self._show_page(self._return_page)
        self._show_error(reason)

    @Slot(str)
    def _on_cancelled(self, reason: str) -> None:
        self._finish_job()
        self._show_page(self._return_page)
        self._show_error(reason)

    def cancel_job(self) -> None:
        if self._job is not None:
            self.cancel_button.setEnabled(False)
            self.detail_label.setText("Cancelling…")
            self._job.cancel.set()

    def reject(self) -> None:
        # Closing mid-step cancels it and waits, so no thread outlives the dialog.
        if self._job is not None:
            self._job.stop_and_wait()
            self._job = None
        super().reject()
