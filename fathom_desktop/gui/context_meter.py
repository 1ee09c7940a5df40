"""How much of the context window the current turn uses: prompt, reasoning and answer."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QWidget

from fathom_desktop.engine.types import FATHOM_N_CTX

# Warn while there is still room for a short answer: R1 answers after long reasoning.
WARN_FRACTION = 0.85
CRITICAL_FRACTION = 0.95

PROMPT_COLOR = QColor("#6c8ebf")
REASONING_COLOR = QColor("#b39ddb")
ANSWER_COLOR = QColor("#66bb6a")


class MeterLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class ContextUsage:
    n_ctx: int = FATHOM_N_CTX
    prompt: int = 0
    reasoning: int = 0
    answer: int = 0

    @property
    def used(self) -> int:
        return self.prompt + self.reasoning + self.answer

    @property
    def left(self) -> int:
        return max(self.n_ctx - self.used, 0)

    @property
    def level(self) -> MeterLevel:
        if self.n_ctx <= 0:
            return MeterLevel.OK  # unknown: a server that does not report its context window
        fraction = self.used / self.n_ctx
        if fraction >= CRITICAL_FRACTION:
            return MeterLevel.CRITICAL
        if fraction >= WARN_FRACTION:
            return MeterLevel.WARNING
        return MeterLevel.OK


class _Bar(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.usage = ContextUsage()
        self.setMinimumWidth(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(240, 10)

    def paintEvent(self, _event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        area = QRectF(self.rect()).adjusted(0.5, 1.5, -0.5, -1.5)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self.palette().color(QPalette.ColorRole.Mid))
        painter.drawRoundedRect(area, 3, 3)
        usage = self.usage
        x = area.left()
        for count, color in (
            (usage.prompt, PROMPT_COLOR),
            (usage.reasoning, REASONING_COLOR),
            (usage.answer, ANSWER_COLOR),
        ):
            width = area.width() * min(count / usage.n_ctx, 1.0) if usage.n_ctx else 0.0
            width = min(width, area.right() - x)
            if width > 0:
                painter.setBrush(color)
                painter.drawRect(QRectF(x, area.top(), width, area.height()))
                x += width
        if usage.level is not MeterLevel.OK:
            marker = QColor("#e65100" if usage.level is MeterLevel.WARNING else "#c62828")
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(marker)
            painter.drawRoundedRect(area, 3, 3)
        painter.end()


_LEVEL_STYLES = {
    MeterLevel.OK: "",
    MeterLevel.WARNING: "color: #e65100; font-weight: bold",
    MeterLevel.CRITICAL: "color: #c62828; font-weight: bold",
}


class ContextMeter(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("contextMeter")
        self.bar = _Bar(self)
        self.label = QLabel(self)
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 0, 8, 0)
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.label)
        self._shown_level = MeterLevel.OK
        self.set_usage(ContextUsage())

    @property
    def usage(self) -> ContextUsage:
        return self.bar.usage

    def set_usage(self, usage: ContextUsage) -> None:
        self.bar.usage = usage
        warning = "⚠ only " if usage.level is not MeterLevel.OK else ""
        left = f"{warning}{usage.left:,} left" if usage.n_ctx > 0 else "context size not reported"
        self.label.setText(
            f"prompt {usage.prompt:,} · reasoning {usage.reasoning:,} · answer {usage.answer:,}"
            f" · {left}"
        )
        if usage.level is not self._shown_level:
            # Restyling re-polishes the widget: only when the level really changes.
            self._shown_level = usage.level
            self.label.setStyleSheet(_LEVEL_STYLES[usage.level])
        self.setToolTip(
            f"Context window of {usage.n_ctx:,} tokens: the prompt (your conversation), the "
            "reasoning and the answer of the current turn share it. Older turns are left out when "
            "a new one does not fit."
        )
        self.bar.update()
