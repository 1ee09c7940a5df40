"""Quality lost against file size, one point per measured level, drawn with QPainter.

The y axis is the mean KL-divergence from the model's BF16 reference on a log scale (lower is
better: the levels span several decades), the x axis the file size; the detected GPU's free
memory is a vertical line, so what lies left of it fits (the KV cache and buffers come on top;
the list's fit badges count those). The geometry is computed in one place (`_layout`) and kept,
so that tests and tooltips ask where a point is instead of reading pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QMouseEvent, QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from fathom_desktop.gui.model_list import human_size

# Below this a KLD is drawn at it: a log axis has no zero.
KLD_FLOOR = 1e-6
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 52, 14, 22, 34
_RADIUS, _CURRENT_RADIUS = 4.0, 7.0
# The free-VRAM line is drawn to scale up to this many times the largest level; beyond, it
# stands at the right edge with an arrow.
VRAM_IN_RANGE = 1.5
EMPTY_TEXT = "No level is measured yet.\nPress Measure beside a level to see what it loses."


@dataclass(frozen=True)
class ChartPoint:
    label: str  # "Q4_K_M"
    size_bytes: int
    kld: float
    current: bool = False
    tooltip: str = ""


@dataclass(frozen=True)
class _Layout:
    plot: QRectF
    x_max: float
    y_low: float  # log10 of the lowest KLD shown
    y_high: float

    def x(self, size_bytes: float) -> float:
        return self.plot.left() + self.plot.width() * size_bytes / self.x_max

    def y(self, kld: float) -> float:
        value = math.log10(max(kld, KLD_FLOOR))
        share = (value - self.y_low) / (self.y_high - self.y_low)
        return self.plot.bottom() - self.plot.height() * share


class QualityChart(QWidget):
    """KLD (log) against size; `set_points` and `set_vram` say what to draw."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._points: list[ChartPoint] = []
        self._vram: int | None = None
        self._title = ""
        self.setMouseTracking(True)
        self.setMinimumSize(260, 200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip(
            "Quality lost (KL-divergence from the BF16 reference, log scale; lower is better) "
            "against file size. The dashed line is the GPU's free memory."
        )

    def sizeHint(self) -> QSize:
        return QSize(320, 240)

    # -- what to draw ------------------------------------------------------------------------------

    def set_points(self, points: list[ChartPoint], title: str = "") -> None:
        self._points = sorted(points, key=lambda p: p.size_bytes)
        self._title = title
        self.update()

    def set_vram(self, free_bytes: int | None) -> None:
        """The GPU's free memory (None: no usable GPU, no line)."""
        self._vram = free_bytes
        self.update()

    def points(self) -> list[ChartPoint]:
        return list(self._points)

    def title(self) -> str:
        return self._title

    # -- geometry ----------------------------------------------------------------------------------

    def _layout(self) -> _Layout | None:
        if not self._points:
            return None
        plot = QRectF(
            _MARGIN_LEFT,
            _MARGIN_TOP,
            max(1.0, self.width() - _MARGIN_LEFT - _MARGIN_RIGHT),
            max(1.0, self.height() - _MARGIN_TOP - _MARGIN_BOTTOM),
        )
        biggest = max(p.size_bytes for p in self._points)
        # The axis reaches the GPU's free memory only when that is near the levels' sizes; a
        # 24 GB card beside a 2 MB demo would squeeze every point against the left edge.
        near = self._vram is not None and self._vram <= VRAM_IN_RANGE * biggest
        x_max = max(biggest, self._vram if near and self._vram else 0) * 1.1 or 1.0
        logs = [math.log10(max(p.kld, KLD_FLOOR)) for p in self._points]
        y_low, y_high = math.floor(min(logs)), math.ceil(max(logs))
        if y_high - y_low < 1:
            y_low, y_high = y_low - 0.5, y_high + 0.5
        return _Layout(plot, x_max, y_low, y_high)

    def plot_rect(self) -> QRectF | None:
        layout = self._layout()
        return layout.plot if layout else None

    def point_position(self, label: str) -> QPointF | None:
        layout = self._layout()
        for point in self._points:
            if layout is not None and point.label == label:
                return QPointF(layout.x(point.size_bytes), layout.y(point.kld))
        return None

    def vram_x(self) -> float | None:
        """Where the free-VRAM line is drawn (the right edge when it is off the scale); None
        when there is none."""
        layout = self._layout()
        if layout is None or self._vram is None:
            return None
        return min(layout.x(self._vram), layout.plot.right())

    def vram_off_scale(self) -> bool:
        layout = self._layout()
        return layout is not None and self._vram is not None and self._vram > layout.x_max

    def point_at(self, position: QPointF) -> ChartPoint | None:
        layout = self._layout()
        if layout is None:
            return None
        best, best_distance = None, 12.0
        for point in self._points:
            spot = QPointF(layout.x(point.size_bytes), layout.y(point.kld))
            distance = math.hypot(spot.x() - position.x(), spot.y() - position.y())
            if distance <= best_distance:
                best, best_distance = point, distance
        return best

    # -- painting ----------------------------------------------------------------------------------

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.WindowText)
        faint = palette.color(QPalette.ColorRole.PlaceholderText)
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        layout = self._layout()
        if layout is None:
            painter.setPen(faint)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, EMPTY_TEXT)
            return
        plot = layout.plot
        metrics = QFontMetrics(self.font())
        # Grid and y labels, one per decade of KLD.
        for decade in range(math.ceil(layout.y_low), math.floor(layout.y_high) + 1):
            y = layout.y(10.0**decade)
            painter.setPen(QPen(faint, 0.5, Qt.PenStyle.DotLine))
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(text)
            label = f"{10.0**decade:g}"
            painter.drawText(
                QRectF(0, y - 8, _MARGIN_LEFT - 6, 16),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                label,
            )
        # X ticks: a handful of round sizes.
        for size in _ticks(layout.x_max):
            x = layout.x(size)
            painter.setPen(QPen(faint, 0.5, Qt.PenStyle.DotLine))
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            painter.setPen(text)
            painter.drawText(
                QRectF(x - 40, plot.bottom() + 2, 80, 16),
                Qt.AlignmentFlag.AlignHCenter,
                human_size(int(size)),
            )
        painter.setPen(QPen(text, 1))
        painter.drawLine(plot.bottomLeft(), plot.bottomRight())
        painter.drawLine(plot.bottomLeft(), plot.topLeft())
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 16, plot.width(), 16),
            Qt.AlignmentFlag.AlignHCenter,
            "file size",
        )
        painter.drawText(
            QRectF(4, 2, self.width() - 8, 18),
            Qt.AlignmentFlag.AlignLeft,
            self._title or "quality lost (KLD, log scale) against size",
        )
        # The GPU's free memory.
        vram_x = self.vram_x()
        if vram_x is not None and self._vram is not None:
            painter.setPen(QPen(QColor("#2e7d32"), 1.5, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(vram_x, plot.top()), QPointF(vram_x, plot.bottom()))
            words = f"GPU free {human_size(self._vram)}"
            if self.vram_off_scale():
                words += " →"
            width = metrics.horizontalAdvance(words) + 6
            left = vram_x - width - 3 if vram_x + width > plot.right() else vram_x + 3
            # At the foot of the line: the levels that lose most sit at the top.
            box = QRectF(left, plot.bottom() - 18, width, 16)
            painter.drawText(box, Qt.AlignmentFlag.AlignLeft, words)
        # The levels, joined in size order, the current one ringed.
        accent = palette.color(QPalette.ColorRole.Highlight)
        spots = [QPointF(layout.x(p.size_bytes), layout.y(p.kld)) for p in self._points]
        painter.setPen(QPen(faint, 1))
        for a, b in zip(spots, spots[1:], strict=False):
            painter.drawLine(a, b)
        labels: list[tuple[QPointF, list[str], float]] = []
        for point, spot in zip(self._points, spots, strict=True):
            painter.setPen(QPen(text, 1))
            painter.setBrush(accent if point.current else text)
            radius = _CURRENT_RADIUS if point.current else _RADIUS
            painter.drawEllipse(spot, radius, radius)
            # Levels drawn on the same spot (the same file size and KLD) share one label.
            near = next((lab for lab in labels if _close(lab[0], spot)), None)
            if near is not None:
                near[1].append(point.label)
            else:
                labels.append((spot, [point.label], radius))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(text, 1))
        placed: list[QRectF] = []
        height = metrics.height()
        for spot, names, radius in labels:
            words = " = ".join(names)
            width = metrics.horizontalAdvance(words) + 2
            # Right of the point, else left of it where the edge would cut the label off; below
            # it where a neighbour's label already sits above.
            x = spot.x() + radius + 2
            if x + width > self.width() - 2:
                x = spot.x() - radius - 2 - width
            box = QRectF(x, spot.y() - radius - height, width, height)
            if any(box.intersects(other) for other in placed):
                box.moveTop(spot.y() + radius)
            placed.append(box)
            painter.drawText(box, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, words)
        painter.end()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        point = self.point_at(event.position())
        if point is not None:
            QToolTip.showText(event.globalPosition().toPoint(), point.tooltip or point.label, self)
        else:
            QToolTip.hideText()
        super().mouseMoveEvent(event)


def _close(a: QPointF, b: QPointF) -> bool:
    return abs(a.x() - b.x()) < 3 and abs(a.y() - b.y()) < 3


def _ticks(x_max: float) -> list[float]:
    """Round sizes for the x axis: steps of 1, 2 or 5 × a power of two's unit, 3 to 6 of them."""
    unit = 1024.0 ** max(0, min(3, int(math.log(max(x_max, 1.0), 1024))))
    span = x_max / unit
    step = 10 ** math.floor(math.log10(max(span / 5, 1e-9)))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    return [i * step * unit for i in range(1, int(span / step) + 1)]
