"""Get Fathom-R1-14B: one dialog from nothing to the recommended level, measured and loaded.

Opened from File › Get Fathom-R1-14B…, the empty chat's welcome view and Settings › Model. The
steps are model_setup's; they run one after another on a worker thread, each in its own child
process, so the window stays responsive and never loads llama.cpp. Cancel stops the step at
hand and keeps the finished ones; closing the dialog cancels too. Reopened (even after a
restart), the dialog shows what is done and continues from the first step that is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from fathom_desktop.gui.background import BackgroundJobs
from fathom_desktop.gui.first_run_steps import TIME_LEFT_AFTER_S, time_left_text
from fathom_desktop.gui.model_list import describe_gpu, human_size, probe_gpu
from fathom_desktop.gui.setup_run import SetupRun
from fathom_desktop.level_choice import Recommendation
from fathom_desktop.model_setup import (
    STEPS,
    SetupPlan,
    SetupState,
    Step,
    default_plan,
    read_state,
    skipped,
    step_done,
)
from fathom_desktop.settings import SettingsSaveError, SettingsStore

ERROR_STYLE = "color: #b00020;"
TITLE = "Get Fathom-R1-14B"

# What each step is called in the list ({level}: the level chosen after the conversion).
STEP_TEXT = {
    Step.DOWNLOAD: "Download the checkpoint from Hugging Face (about 30 GB)",
    Step.CONVERT: "Convert it to a BF16 GGUF (about 30 GB)",
    Step.IMATRIX: "Make the importance matrix",
    Step.QUANTIZE: "Make {level}",
    Step.MEASURE: "Measure {level}'s quality against BF16",
}
LOAD_TEXT = "Load {level}"
# Steps whose progress counts tokens rather than bytes.
TOKEN_STEPS = frozenset({Step.IMATRIX, Step.MEASURE})
MARK = {"done": "✓", "now": "▶", "todo": "·", "skip": "–", "failed": "✗"}


class GetFathomDialog(QDialog):
    """The flow's window; `model_ready` carries the level to load when the flow completes."""

    model_ready = Signal(object)  # Path
    step_started = Signal(object)  # Step, on the GUI thread

    def __init__(self, parent: QWidget | None = None, *, plan: SetupPlan | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(TITLE)
        self.setMinimumWidth(640)
        self.plan = plan if plan is not None else default_plan()
        self.state = SetupState()
        self._run: SetupRun | None = None
        self._current: Step | None = None
        self._failed: Step | None = None
        self._checked = False
        self._done_on_disk: frozenset[Step] = frozenset()
        self._closing = False
        # Where the current progress line started (title, time, amount): the time-left estimate.
        self._rate_from: tuple[str, float, int] | None = None
        self._background = BackgroundJobs(self)

        intro = QLabel(
            f"This downloads {self.plan.repo_id} from huggingface.co, converts it, makes the "
            "quantization level that suits this computer, measures what that level loses against "
            "the full-precision model, and loads it. It needs about 70 GB of free disk space and "
            "takes a while; you can chat with the current model meanwhile, and Cancel or closing "
            "this window keeps the finished steps for next time."
        )
        intro.setWordWrap(True)
        self.gpu_label = QLabel("GPU: checking…")
        self.gpu_label.setTextFormat(Qt.TextFormat.PlainText)
        folder = QLabel(f"Models are kept in {self.plan.models_dir}")
        folder.setTextFormat(Qt.TextFormat.PlainText)
        folder.setWordWrap(True)

        grid = QGridLayout()
        grid.setColumnStretch(1, 1)
        self.step_marks: dict[Step | None, QLabel] = {}
        self.step_labels: dict[Step | None, QLabel] = {}
        for row, step in enumerate((*STEPS, None)):  # None: loading the level
            mark, label = QLabel(), QLabel()
            label.setTextFormat(Qt.TextFormat.PlainText)
            mark.setFixedWidth(18)
            grid.addWidget(mark, row, 0)
            grid.addWidget(label, row, 1)
            self.step_marks[step], self.step_labels[step] = mark, label

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.hide()
        self.detail_label = QLabel()
        self.detail_label.setTextFormat(Qt.TextFormat.PlainText)
        self.recommend_label = QLabel()
        self.recommend_label.setTextFormat(Qt.TextFormat.PlainText)
        self.recommend_label.setWordWrap(True)
        self.recommend_label.hide()
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.hide()

        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.start_button.setEnabled(False)  # until the saved state is read
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.gpu_label)
        layout.addWidget(folder)
        layout.addSpacing(6)
        layout.addLayout(grid)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.detail_label)
        layout.addWidget(self.recommend_label)
        layout.addWidget(self.error_label)
        layout.addStretch(1)
        layout.addLayout(buttons)

        self._show_steps()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._stop_for_exit)
        plan_now = self.plan
        # The state file, the manifest and the GPU are read aside (a slow disk, NVML).
        self._background.run(lambda: _saved(plan_now), self._state_read)
        self._background.run(probe_gpu, lambda gpu: self.gpu_label.setText(describe_gpu(gpu)))

    # -- what is shown -------------------------------------------------------------------------

    def _state_read(self, saved: tuple[SetupState, frozenset[Step]]) -> None:
        self.state, done = saved
        self._done_on_disk = done
        self._checked = True
        self._show_steps()
        if self.state.reason:
            self._show_recommendation(self.state.reason)
        self._set_idle()

    def _show_steps(self) -> None:
        level = self.state.level or "the recommended level"
        done = self._done_on_disk
        for step in STEPS:
            text = STEP_TEXT[step].format(level=level)
            if step is Step.IMATRIX and skipped(self.plan, self.state, step):
                text += f" (not needed for {self.state.level})"
                mark = "skip"
            elif step is self._current:
                mark = "now"
            elif step is self._failed:
                mark = "failed"
            elif step in done:
                mark = "done"
            else:
                mark = "todo"
            self._mark(step, mark, text)
        loaded = self.state.level is not None and len(self._finished()) == len(STEPS)
        self._mark(
            None, "done" if loaded and self._run is None else "todo", LOAD_TEXT.format(level=level)
        )

    def _mark(self, step: Step | None, mark: str, text: str) -> None:
        self.step_marks[step].setText(MARK[mark])
        self.step_marks[step].setObjectName(mark)
        label = self.step_labels[step]
        label.setText(text)
        font = label.font()
        font.setBold(mark == "now")
        label.setFont(font)

    def _finished(self) -> frozenset[Step]:
        """Steps done, and the one the chosen level does not need."""
        unneeded = {step for step in STEPS if skipped(self.plan, self.state, step)}
        return self._done_on_disk | unneeded

    def _fit_contents(self) -> None:
        # Grow when a line appears (the progress, the recommendation, an error) rather than
        # squeeze the list of steps; a window manager's size is kept when it is large enough.
        if self.height() < self.sizeHint().height():
            self.resize(self.width(), self.sizeHint().height())

    def step_mark(self, step: Step | None) -> str:
        """ "done", "now", "todo", "skip" or "failed", as the list shows it."""
        return self.step_marks[step].objectName()

    def _show_recommendation(self, reason: str) -> None:
        self.recommend_label.setText(f"Recommended: {reason}")
        self.recommend_label.show()
        self._fit_contents()

    def recommendation_text(self) -> str:
        return self.recommend_label.text() if not self.recommend_label.isHidden() else ""

    def error_text(self) -> str:
        return self.error_label.text() if not self.error_label.isHidden() else ""

    def _show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))
        self._fit_contents()

    def _set_idle(self) -> None:
        done = self._finished()
        self.cancel_button.hide()
        self.close_button.setText("Close")
        self.progress_bar.hide()
        self.start_button.setVisible(True)
        self.start_button.setEnabled(self._checked)
        if self.state.level is not None and len(done) == len(STEPS):
            self.start_button.setText(f"Load {self.state.level}")
            self.detail_label.setText("Everything is done.")
        elif done:
            first = next(step for step in STEPS if step not in done)
            self.start_button.setText("Continue")
            self.detail_label.setText(f"Continues with: {self._step_name(first)}.")
        else:
            self.start_button.setText("Start")
            self.detail_label.setText("")

    def _step_name(self, step: Step) -> str:
        text = STEP_TEXT[step].format(level=self.state.level or "the recommended level")
        text = text.split(" (")[0]
        return text[:1].lower() + text[1:]

    def running(self) -> bool:
        return self._run is not None

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._run is not None or not self._checked:
            return
        done = self._finished()
        if self.state.level is not None and len(done) == len(STEPS):
            self.model_ready.emit(self.plan.level_file(self.state.level))
            self._mark(None, "done", LOAD_TEXT.format(level=self.state.level))
            self.start_button.hide()
            self.detail_label.setText(f"Everything is done; {self.state.level} is loaded.")
            return
        self._show_error("")
        self._failed = None
        run = SetupRun(self.plan)
        self._run = run
        # Queued: the signals are emitted on the run's thread and the slots touch widgets.
        queued = Qt.ConnectionType.QueuedConnection
        run.step_started.connect(self._on_step_started, queued)
        run.step_finished.connect(self._on_step_finished, queued)
        run.progress.connect(self._on_progress, queued)
        run.recommended.connect(self._on_recommended, queued)
        run.finished.connect(self._on_finished, queued)
        run.failed.connect(self._on_failed, queued)
        run.cancelled.connect(self._on_cancelled, queued)
        self.start_button.hide()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.close_button.setText("Close (cancels)")
        self.detail_label.setText("Starting…")
        run.start()

    def cancel(self) -> None:
        if self._run is not None:
            self.cancel_button.setEnabled(False)
            self.detail_label.setText("Cancelling…")
            self._run.cancel.set()

    @Slot(object)
    def _on_step_started(self, step: Step) -> None:
        self._current = step
        self.progress_bar.setRange(0, 0)
        self.progress_bar.show()
        self.detail_label.setText("Starting…")
        self._show_steps()
        self._fit_contents()
        self.step_started.emit(step)

    @Slot(object, object)
    def _on_step_finished(self, step: Step, state: SetupState) -> None:
        self.state = state
        self._done_on_disk = self._done_on_disk | {step}
        self._current = None
        self._show_steps()

    @Slot(str, int, int, str)
    def _on_progress(self, title: str, done: int, total: int, message: str) -> None:
        if self._run is None or self._run.cancel.is_set():
            return
        tokens = self._current in TOKEN_STEPS and not title.startswith("sha256")
        now = time.monotonic()
        if self._rate_from is None or self._rate_from[0] != title:
            self._rate_from = (title, now, done)
        _, since, done_then = self._rate_from
        # From the rate since the line began; the first seconds' rate would swing wildly.
        if total > 0 and now - since >= TIME_LEFT_AFTER_S and done > done_then:
            left = time_left_text((total - done) * (now - since) / (done - done_then))
            message = f"{message}  {left}".strip()
        if total > 0:
            self.progress_bar.setRange(0, 1000)  # permille: a 30 GB total overflows an int
            self.progress_bar.setValue(int(1000 * min(done, total) / total))
            amount = (
                f"{done:,} of {total:,} tokens"
                if tokens
                else f"{human_size(done)} of {human_size(total)}"
            )
            detail = f"{title}: {amount}"
        else:
            self.progress_bar.setRange(0, 0)
            detail = title
        self.detail_label.setText(f"{detail}  {message}".strip())

    @Slot(object, object)
    def _on_recommended(self, chosen: Recommendation, state: SetupState) -> None:
        self.state = state
        self._show_recommendation(chosen.reason)
        self._show_steps()

    def _end_run(self) -> None:
        if self._run is not None:
            self._run.thread.wait()
            self._run = None
        self._current = None

    @Slot(object)
    def _on_finished(self, state: SetupState) -> None:
        self._end_run()
        self.state = state
        self._done_on_disk = frozenset(STEPS)
        self._set_idle()
        self._show_steps()
        if state.level is not None:
            self.model_ready.emit(self.plan.level_file(state.level))
            # Just loaded: a "Load" button now would offer what has happened.
            self.start_button.hide()
            self.detail_label.setText(f"Everything is done; {state.level} is loaded.")
        self._close_if_asked()

    @Slot(str)
    def _on_failed(self, reason: str) -> None:
        self._failed = self._current
        self._end_run()
        self._set_idle()
        self._show_steps()
        self._show_error(reason)
        self._close_if_asked()

    @Slot(str)
    def _on_cancelled(self, reason: str) -> None:
        self._end_run()
        self._set_idle()
        self._show_steps()
        self._show_error(reason)
        self._close_if_asked()

    def reject(self) -> None:
        # Closing mid-step cancels it; the dialog hides at once and closes when the child has
        # stopped (it removes its partial output first), so the window never waits for it.
        if self._run is not None:
            self._closing = True
            self.cancel()
            self.hide()
            return
        super().reject()

    def reopen(self) -> None:
        """Show again, also a dialog still cancelling after a close (Continue follows)."""
        self._closing = False
        self.show()
        self.raise_()
        self.activateWindow()

    def _close_if_asked(self) -> None:
        if self._closing:
            self._closing = False
            super().reject()

    @Slot()
    def _stop_for_exit(self) -> None:
        # The app is quitting: no thread may outlive it, so wait for the step to stop.
        if self._run is not None:
            self._run.stop_and_wait()
            self._run = None


def _saved(plan: SetupPlan) -> tuple[SetupState, frozenset[Step]]:
    """The saved state and which steps are done on disk (reads files: call it off the GUI)."""
    state = read_state(plan)
    return state, frozenset(step for step in STEPS if step_done(plan, state, step))


def open_get_fathom(
    parent: QWidget,
    store: SettingsStore,
    load: Callable[[], None],
    warn: Callable[[str], None],
    plan: SetupPlan | None = None,
) -> GetFathomDialog:
    """Show the flow (non-modal, one at a time); its level becomes the model setting and loads."""
    for existing in parent.findChildren(GetFathomDialog):
        if existing.isVisible() or existing.running():
            existing.reopen()
            return existing
    dialog = GetFathomDialog(parent, plan=plan)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

    def ready(path: Path) -> None:
        store.set("model_path", str(path))
        try:
            store.save()
        except SettingsSaveError as error:  # the model is still used for this run
            warn(str(error))
        load()

    dialog.model_ready.connect(ready)
    dialog.show()
    return dialog
