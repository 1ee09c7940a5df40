"""LaTeX to images: ziamath lays the formula out as SVG (pure Python, its own STIX math font),
QtSvg paints it into a QImage that a QTextDocument can show inline.

No browser engine and no TeX installation are involved; the three pure-Python packages add about
4 MB. A formula ziamath cannot parse yields None and the caller shows its source instead.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

log = logging.getLogger(__name__)

_VIEWBOX = re.compile(r'viewBox="([-\d.e]+) ([-\d.e]+) ([-\d.e]+) ([-\d.e]+)"')
_CACHE_SIZE = 512
# ziamath keeps module-level font caches; one caller at a time (the GUI, or the warm-up thread).
_ziamath_lock = threading.Lock()
_warm_up_started = False


@dataclass(frozen=True)
class MathStyle:
    font_px: float  # size of the surrounding text, in logical pixels
    color: str  # "#rrggbb"
    # Where Qt centres an inline object (AlignMiddle) is half the x-height above the baseline;
    # the image is padded so that the formula's own baseline lands on the text baseline.
    x_height: float
    # Background behind formulas holding \boxed{}, so the final answer stands out.
    highlight: str
    device_pixel_ratio: float = 2.0


@dataclass(frozen=True)
class MathImage:
    image: QImage
    width: float  # logical pixels
    height: float
    # True when the image is padded for Qt's AlignMiddle (inline formulas).
    centred_on_baseline: bool


def is_final_answer(tex: str) -> bool:
    return "\\boxed" in tex


class MathRenderer:
    """Renders formulas, remembering recent ones (a streamed answer re-renders the same ones)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[str, bool, MathStyle], MathImage | None] = OrderedDict()

    def render(self, tex: str, display: bool, style: MathStyle) -> MathImage | None:
        key = (tex, display, style)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        image = _render(tex, display, style)
        self._cache[key] = image
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return image


def start_warm_up() -> None:
    """Load ziamath and its font in a background thread, once per process.

    The first formula otherwise costs the GUI thread about half a second, typically at the end of
    the first answer. This is pure Python (no Qt objects), so it may run off the GUI thread.
    """
    global _warm_up_started
    if _warm_up_started:
        return
    _warm_up_started = True
    style = MathStyle(font_px=16, color="#000000", x_height=8, highlight="#00000000")
    threading.Thread(
        target=_svg, args=("\\frac{1}{2}", True, style), name="math-warm-up", daemon=True
    ).start()


def _svg(tex: str, display: bool, style: MathStyle) -> str | None:
    size = style.font_px * (1.1 if display else 1.0)
    with _ziamath_lock:
        import ziamath  # imported late: it loads its font tables (~0.5 s) on first use

        # SVG 1.1: QtSvg draws SVG Tiny, which has no <symbol>, so SVG 2 glyphs come out blank.
        ziamath.config.svg2 = False
        try:
            return ziamath.Latex(tex, size=size, color=style.color, inline=not display).svg()
        except Exception as error:  # ziamath raises many kinds on TeX it does not know
            log.info("cannot render formula %r: %s", tex, error)
            return None


def _render(tex: str, display: bool, style: MathStyle) -> MathImage | None:
    svg = _svg(tex, display, style)
    if svg is None:
        return None
    box = _VIEWBOX.search(svg)
    renderer = QSvgRenderer(QByteArray(svg.encode("utf-8")))
    if box is None or not renderer.isValid():
        return None
    _, min_y, width, height = (float(value) for value in box.groups())
    ascent = -min_y  # ziamath puts the baseline at y = 0
    descent = height - ascent
    pad_top = pad_bottom = 0.0
    if not display:
        # Pad so that ascent - descent equals the x-height: AlignMiddle then puts the baseline
        # on the text's baseline.
        padded_ascent = max(ascent, descent + style.x_height)
        padded_descent = padded_ascent - style.x_height
        pad_top, pad_bottom = padded_ascent - ascent, padded_descent - descent
    margin = 2.0 if is_final_answer(tex) else 0.0
    logical_w = width + 2 * margin
    logical_h = height + pad_top + pad_bottom + 2 * margin

    ratio = style.device_pixel_ratio
    image = QImage(
        math.ceil(logical_w * ratio),
        math.ceil(logical_h * ratio),
        QImage.Format.Format_ARGB32_Premultiplied,
    )
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.scale(ratio, ratio)
    if margin:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(style.highlight))
        painter.drawRoundedRect(QRectF(0, pad_top, logical_w, height + 2 * margin), 3, 3)
    renderer.render(painter, QRectF(margin, pad_top + margin, width, height))
    painter.end()
    image.setDevicePixelRatio(ratio)
    return MathImage(image, logical_w, logical_h, centred_on_baseline=not display)
