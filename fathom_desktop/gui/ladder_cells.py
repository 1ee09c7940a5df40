"""The pieces of a ladder row: its quality in words, and its Make / Measure / Cancel cell."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget

from fathom_desktop.gui.ladder_jobs import JobProgress
from fathom_desktop.gui.model_list import ModelEntry
from fathom_desktop.model_ladder import LadderRow, ModelGroup

NOT_MEASURED = "not measured"
MAKE, MEASURE, CANCEL = "Make", "Measure", "Cancel"
NEEDS_SOURCE = "Needs BF16…"
ACTION_WIDTH = 128
# Levels of models other than the demo are calibrated on this many chunks of the shipped text.
IMATRIX_CHUNKS = 100


def quality_text(row: LadderRow) -> str:
    q = row.quality
    if q is None:
        return "reference" if row.is_reference else (NOT_MEASURED if row.made else "")
    return f"{100 * q.top1:.1f} % · {q.kld_mean:.3g}"


def quality_tooltip(row: LadderRow, group: ModelGroup) -> str:
    reference = group.reference.name if group.reference else "the BF16 file"
    if row.is_reference:
        return f"{row.path.name} is the reference the other levels are measured against."
    q = row.quality
    if q is None:
        return (
            f"Not measured yet. Measure runs this level and {reference} over the same text and "
            f"compares their predictions token by token."
        )
    return (
        f"How close {row.quant} stays to {reference}, measured on {q.tokens:,} tokens of the "
        f"evaluation text ({q.chunks} chunks of {q.ctx}; llama.cpp's method):\n"
        f"• Same top token: {100 * q.top1:.2f} % ± {100 * q.top1_se:.2f} of the time both pick "
        f"the same most likely next token (100 % = no change).\n"
        f"• KLD: {q.kld_mean:.5f} ± {q.kld_se:.5f}, how far the level's next-token probabilities "
        f"drift from the reference's, averaged over the tokens (0 = identical; lower is "
        f"better); 1 token in 100 drifts more than {q.kld_p99:.4f}.\n"
        f"• Perplexity {q.ppl:.3f} against the reference's {q.ppl_reference:.3f}."
    )


def model_entry(row: LadderRow) -> ModelEntry:
    return ModelEntry(
        path=row.path,
        size_bytes=row.size_bytes,
        quant=row.quant,
        sha256=row.sha256,
        in_manifest=row.sha256 is not None,
        aliases=row.aliases,
    )


class ActionCell(QWidget):
    """The last column of a level: Make / Measure, or progress and Cancel while it runs."""

    def __init__(self) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(2, 0, 2, 0)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(52)
        self.bar.setTextVisible(True)
        self.bar.hide()
        self.button = QPushButton()
        self.button.setAutoDefault(False)
        layout.addWidget(self.bar)
        layout.addWidget(self.button)
        self._slot: Callable[[], None] | None = None
        self.button.clicked.connect(lambda: self._slot() if self._slot else None)

    def show_button(self, text: str, slot: Callable[[], None], tip: str, enabled: bool) -> None:
        self.bar.hide()
        self.button.setText(text)
        self.button.setToolTip(tip)
        self.button.setEnabled(enabled)
        self.button.show()
        self._slot = slot

    def show_progress(self, progress: JobProgress | None, cancel: Callable[[], None]) -> None:
        self.bar.show()
        percent = progress.percent if progress is not None else None
        if percent is None:
            self.bar.setRange(0, 0)  # busy, no figure yet
        else:
            self.bar.setRange(0, 100)
            self.bar.setValue(percent)
        self.bar.setToolTip(progress.step if progress else "")
        self.show_cancel(cancel)

    def show_cancel(self, cancel: Callable[[], None]) -> None:
        self.button.setText(CANCEL)
        self.button.setToolTip("Stop; nothing unfinished is kept.")
        self.button.setEnabled(True)
        self.button.show()
        self._slot = cancel
